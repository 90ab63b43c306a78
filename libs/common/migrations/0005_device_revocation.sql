-- A revoked device (the admin API's revoke: its MQTT account deleted) stays in the registry, for
-- the readings it sent before; revoked_at says since when it has no account. Registering it
-- again clears it. The admin API's role may set it (UPDATE on devices, 0003_roles.sql).
ALTER TABLE devices ADD COLUMN IF NOT EXISTS revoked_at timestamptz;
