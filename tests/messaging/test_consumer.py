"""The consumer task's own behaviour, apart from any domain handler."""

import time

import pytest
from django.db import OperationalError, connection
from django_celery_results.models import TaskResult

from ordering import catalogue
from ordering.messaging.consumer import Outcome, ensure_usable_database, retry_countdown
from orders.models import Order
from tests.conftest import make_order
from tests.consumers import deliver
from tests.events import payment_captured
from tests.services import terminate_own_connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_batch_on_a_connection_a_database_restart_killed_runs_again_on_a_new_one(user):
    order = make_order(user)
    terminate_own_connection()
    assert deliver(catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED, payment_captured(order)) == [Outcome.ACK]
    order.refresh_from_db()
    assert order.status == "PROCESSED"
    assert not TaskResult.objects.exists()  # no retry, no failure: it simply ran again


def test_an_old_connection_is_closed_before_the_next_batch():
    Order.objects.count()
    first = connection.connection
    connection.close_at = time.monotonic() - 1  # past CONN_MAX_AGE
    ensure_usable_database()
    assert connection.connection is None
    Order.objects.count()
    assert connection.connection is not first


def test_without_running_again_the_killed_connection_fails_the_batch():
    Order.objects.count()
    terminate_own_connection()
    with pytest.raises(OperationalError):
        Order.objects.count()
    connection.close()


@pytest.mark.parametrize("jitter", [True, False])
def test_retry_countdown_grows_exponentially_with_a_cap_and_a_floor(settings, jitter):
    settings.MESSAGING = {
        **settings.MESSAGING,
        "RETRY_BACKOFF_SECONDS": 2,
        "RETRY_BACKOFF_MAX_SECONDS": 30,
        "RETRY_JITTER": jitter,
    }
    for retries, backoff in enumerate([2, 4, 8, 16, 30, 30]):
        for _ in range(50):
            countdown = retry_countdown(retries)
            assert isinstance(countdown, int)
            if jitter:
                assert max(1, backoff // 2) <= countdown <= backoff
            else:
                assert countdown == backoff
