"""URL map: the API, its schema and docs, the admin, health checks and metrics."""

from django.contrib import admin
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from health_check.views import HealthCheckView
from rest_framework.routers import DefaultRouter

from ordering import admin as _third_party_admin  # noqa: F401 (admin choices for third-party models)
from ordering.metrics import metrics_view
from orders.apis import OrderViewSet

router = DefaultRouter()
router.register("orders", OrderViewSet, basename="order")


def health_live(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers (no dependency: restarting web would not fix one)."""
    return JsonResponse({"status": "ok"})


def health(request: HttpRequest) -> JsonResponse:
    """Liveness and database reachability (the broker is not needed to accept orders)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


handler404 = "ordering.api.page_not_found"

urlpatterns = [
    path("api/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/auth/", include("rest_framework.urls")),
    path("admin/", admin.site.urls),
    path("health/", health),
    path("health/live", health_live, name="health-live"),
    path(
        "health/ready",
        HealthCheckView.as_view(
            checks=["health_check.checks.Database", "ordering.health.ConsumerQueues", "ordering.health.OutboxPublished"]
        ),
        name="health-ready",
    ),
    # For Prometheus on the internal network only: the public proxy refuses it (deploy/nginx.conf).
    path("metrics", metrics_view, name="metrics"),
]
