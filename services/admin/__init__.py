"""admin: the admin API (HTTPS, OAuth 2.0 bearer tokens with realm roles): the device registry
and the devices' MQTT accounts, the dead-letter queue's browse and replay, and the audit log.
Every call, allowed or refused, is one row of the audit log (docs/security.md, "Admin API")."""
