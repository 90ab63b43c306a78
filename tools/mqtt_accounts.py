"""Device accounts of Mosquitto's TLS listener: the code is libs.common.mqtt_accounts (the admin
API registers and revokes devices with it too, and services never import tools); this name stays
for the tools, the tests and operators' scripts that import it from here."""

from libs.common.mqtt_accounts import (
    CONTROL_TOPIC,
    DEVICE_ID,
    DEVICES_GROUP,
    READINGS_TOPIC,
    RESPONSE_TOPIC,
    Control,
    DeviceCredentials,
    MqttAccountsSettings,
    check_device_id,
    device_role,
    register_device,
    revoke_device,
    stored_password,
)

__all__ = [
    "CONTROL_TOPIC",
    "DEVICES_GROUP",
    "DEVICE_ID",
    "READINGS_TOPIC",
    "RESPONSE_TOPIC",
    "Control",
    "DeviceCredentials",
    "MqttAccountsSettings",
    "check_device_id",
    "device_role",
    "register_device",
    "revoke_device",
    "stored_password",
]
