"""The consumer task's own behaviour, apart from any domain handler."""

import pytest
from django.db import OperationalError, connection

from ordering.messaging.consumer import ensure_usable_database, retry_countdown
from orders.models import Order
from tests.services import terminate_own_connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_connection_killed_by_a_database_restart_is_replaced_before_the_next_task():
    Order.objects.count()
    terminate_own_connection()
    ensure_usable_database()
    assert Order.objects.count() == 0


def test_without_the_check_the_killed_connection_fails_the_task():
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
