"""Consumers run as a worker's pool process runs them, without a worker or a broker.

Each envelope becomes the task message the relay would publish (round-tripped through JSON),
and the whole list is handed to the consumer machinery as one batch.
"""

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.consumer import Delivery, Outcome, consume
from ordering.messaging.envelope import Envelope
from ordering.messaging.relay import task_message


def delivery_for(task_name: str, envelope: Envelope, *, redelivered: bool = False) -> Delivery:
    queue = catalogue.queue_of_task(task_name)
    message = task_message(app, envelope, task_name, queue)
    return Delivery(
        headers=message.headers,
        properties=message.properties,
        delivery_info={"exchange": message.exchange, "routing_key": queue, "redelivered": redelivered},
        body=message.body,
        hostname="tests@localhost",
    )


def deliver(task_name: str, *envelopes: Envelope) -> list[Outcome]:
    """Consume `envelopes` as one batch of `task_name`'s messages; the outcome of each."""
    if task_name not in app.tasks:
        app.loader.import_default_modules()  # the consumer tasks, as a worker imports them at start
    return consume(app.tasks[task_name], [delivery_for(task_name, envelope) for envelope in envelopes])
