"""The two kinds of consumer failure: worth retrying, or dead on arrival."""


class TransientError(Exception):
    """A failure that may go away by itself (an outage, a timeout): the consumer retries."""


class PermanentError(Exception):
    """A failure that no retry can fix: the message goes straight to its dead-letter queue."""


class MalformedEnvelope(PermanentError):
    """The message body is not an event envelope we can read."""


class UnknownEventVersion(PermanentError):
    """The envelope names an event type or version this consumer does not understand."""


class InvalidPayload(PermanentError):
    """The envelope is well formed but its payload does not match the event's contract."""
