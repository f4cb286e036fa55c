from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("chat/token/", views.token, name="token"),
    path("chat/moderate/<int:pk>/", views.moderate, name="moderate"),
    path("chat/<str:room_name>/", views.room, name="room"),
    path("centrifugo/connect", views.connect_proxy),
    path("centrifugo/publish", views.publish_proxy),
    path("centrifugo/rpc", views.rpc_proxy),
]
