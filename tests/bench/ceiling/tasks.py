"""A two-task Celery chain that does nothing: the first publishes the second, as a naive pipeline would."""

from celery import shared_task

FIRST_QUEUE = "bench.chain.first"
SECOND_QUEUE = "bench.chain.second"


@shared_task(name="bench.chain.first")
def chain_first(n: int) -> None:
    chain_second.apply_async((n,), queue=SECOND_QUEUE)


@shared_task(name="bench.chain.second")
def chain_second(n: int) -> None:
    return None
