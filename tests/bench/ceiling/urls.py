"""The system's URLs plus the trivial create."""

from django.urls import include, path
from rest_framework import generics, serializers

from tests.bench.ceiling.models import Ping


class PingSerializer(serializers.ModelSerializer):
    class Meta:
        model = Ping
        fields = ["id", "note", "created_at"]


class PingCreate(generics.CreateAPIView):
    serializer_class = PingSerializer

    def perform_create(self, serializer: PingSerializer) -> None:
        serializer.save(owner=self.request.user)


urlpatterns = [
    path("bench/pings/", PingCreate.as_view()),
    path("", include("ordering.urls")),
]
