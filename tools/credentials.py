"""`python -m tools.credentials`: credentials for the pipeline's clients, from the local stack's
servers that issue them.

  token --scope readings:write [--device ID]
      prints an access token (a JWT) for the HTTP ingest API from the identity provider
      (Keycloak, realm sensor-pipeline): the client-credentials grant of the device fleet's
      client. With --device, the token is bound to that device (claim device_id): it comes from
      the device's own client, device-<ID>, created in the realm on first use.
  token --user viewer|operator|admin
      prints a user's access token for the admin API (audience admin-api, the user's realm
      roles): the password grant of the public client pipeline-cli, with the user's password
      that `make up` generated (.stack/secrets/keycloak/<user>.password).
  device <device_id>
      prints one JSON object {device_id, mqtt_url, username, password, ca_file}: the device's
      account on Mosquitto's TLS listener, registered if it is new (the same every time).
  revoke <device_id>
      deletes the device's MQTT account (its session is cut, its next connect refused) and
      prints {device_id, revoked}.
  database --role reader|store|enrich|admin_api|migrator
      prints a PostgreSQL DSN for that role of least privilege (TLS, sslmode=verify-full).
  kafka [--user operator|admin|ingest|validate|enrich|store]
      prints librdkafka's key=value lines (bootstrap.servers, security.protocol, sasl.mechanisms,
      sasl.username, sasl.password, ssl.ca.location) for a SCRAM user of Kafka's SASL_SSL
      listener: by default `operator`, which may read every pipeline topic.

The clients' secrets are the ones `make up` generated into the stack folder
(.stack/secrets/keycloak), unless settings name others; the MQTT accounts are those of
tools.mqtt_accounts (STACK_DIR, MQTT_TLS_PORT, TLS_CA_FILE, MQTT_ADMIN_PASSWORD). Exit 2 when the
identity provider or the broker refuses (a wrong secret, an unknown scope, a bad device id) or a
setting is wrong, 1 when it cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.cli import argument_parser, settings_problems
from libs.common.errors import ConfigurationError, PipelineError, TransientError
from libs.common.settings import PipelineSettings
from libs.common.stack import local_ca_file, local_secrets_dir, read_secret
from tools.db_accounts import ROLES, dsn_for
from tools.kafka_accounts import USERS, KafkaAccountsSettings, credentials_for
from tools.mqtt_accounts import MqttAccountsSettings, register_device, revoke_device

# The checkout's root (tools/credentials.py -> the repo), resolved at run time so that no
# machine's path is a committed default.
DEVICE_CLAIM = "device_id"
# A device's own client is named device-<id>; Keycloak client ids are kept to these characters.
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


class CredentialsSettings(BaseSettings):
    """Where the identity provider is and which clients the tool asks it as."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    idp_url: str = Field(
        default="http://127.0.0.1:8180/realms/sensor-pipeline",
        description="The realm's URL, which is also the tokens' issuer (iss).",
    )
    idp_fleet_client_id: str = "fleet-simulator"
    idp_fleet_client_secret: SecretStr | None = Field(
        default=None, description="None: the stack folder's <client id>.secret file."
    )
    # The public client of the password grant (`token --user`): its tokens carry the user's
    # realm roles and audience admin-api.
    idp_cli_client_id: str = "pipeline-cli"
    idp_provisioner_client_id: str = "pipeline-provisioner"
    idp_provisioner_client_secret: SecretStr | None = None
    # None: <repo>/.stack/secrets/keycloak, where `make up` writes them (a stack in another
    # STACK_DIR has its own: point this at $STACK_DIR/secrets/keycloak).
    idp_secrets_dir: Path | None = None
    idp_timeout_s: float = Field(default=10.0, gt=0)
    # The CA an https IDP_URL's certificate must verify against. None: the local stack's,
    # <repo>/.stack/certs/ca.crt.
    idp_ca_file: Path | None = None

    def secrets_dir(self) -> Path:
        return self.idp_secrets_dir or local_secrets_dir() / "keycloak"

    def tls_verify(self) -> ssl.SSLContext | bool:
        """For an https IDP_URL, a context that trusts only that CA (TLS 1.2 or newer)."""
        if not self.idp_url.startswith("https://"):
            return True
        path = self.idp_ca_file or local_ca_file()
        try:
            context = ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            message = f"cannot load the CA file {path} (IDP_CA_FILE): {exc}"
            raise ConfigurationError(message) from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def token_endpoint(self) -> str:
        return f"{self.idp_url.rstrip('/')}/protocol/openid-connect/token"

    def admin_url(self) -> str:
        """The realm's admin REST API: .../realms/<realm> -> .../admin/realms/<realm>."""
        base, _, realm = self.idp_url.rstrip("/").rpartition("/realms/")
        return f"{base}/admin/realms/{realm}"


class CredentialsError(PipelineError):
    """The identity provider refused what was asked, or a setting is wrong: asking again with
    the same input gives the same answer."""


class IdpUnavailable(TransientError):
    """The identity provider could not be reached or answered with a server error."""


@dataclass(frozen=True)
class Client:
    client_id: str
    secret: SecretStr


def stack_secret(settings: CredentialsSettings, client_id: str) -> SecretStr:
    """A client's secret as `make up` generated it into the stack folder."""
    return read_secret(
        settings.secrets_dir() / f"{client_id}.secret",
        f"the secret of client {client_id}",
        "run `make up`, or set IDP_SECRETS_DIR to the stack's secrets/keycloak folder",
    )


def fleet_client(settings: CredentialsSettings) -> Client:
    client_id = settings.idp_fleet_client_id
    return Client(client_id, settings.idp_fleet_client_secret or stack_secret(settings, client_id))


def provisioner_client(settings: CredentialsSettings) -> Client:
    client_id = settings.idp_provisioner_client_id
    secret = settings.idp_provisioner_client_secret or stack_secret(settings, client_id)
    return Client(client_id, secret)


def untrusted_certificate(exc: BaseException) -> bool:
    """Whether a failed connection was a TLS certificate that did not verify: a wrong CA file
    or server certificate, not a server that is away."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _send(http: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request; no answer or a 5xx is IdpUnavailable (the caller may try later)."""
    try:
        response = http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        if untrusted_certificate(exc):
            raise CredentialsError(
                f"the identity provider's certificate at {url} does not verify against the CA "
                f"file (IDP_CA_FILE): {exc}"
            ) from exc
        raise IdpUnavailable(
            f"cannot reach the identity provider at {url} ({exc}): is it running (`make up`)?"
        ) from exc
    if response.status_code >= 500:
        raise IdpUnavailable(f"the identity provider answered {response.status_code} at {url}")
    return response


def refusal(response: httpx.Response) -> str:
    """The OAuth 2.0 error of a refused request, as Keycloak words it."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    error = body.get("error") or body.get("errorMessage") or f"HTTP {response.status_code}"
    description = body.get("error_description")
    return f"{error} ({description})" if description else str(error)


def client_credentials_token(
    http: httpx.Client, settings: CredentialsSettings, client: Client, scope: str | None
) -> str:
    """An access token for the client itself (the client-credentials grant)."""
    form = {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.secret.get_secret_value(),
    }
    if scope:
        form["scope"] = scope
    response = _send(http, "POST", settings.token_endpoint(), data=form)
    if response.status_code != 200:
        raise CredentialsError(
            f"the identity provider refused a token to client {client.client_id}"
            f"{f' with scope {scope}' if scope else ''}: {refusal(response)}"
        )
    token = response.json().get("access_token")
    if not isinstance(token, str) or not token:
        raise CredentialsError(f"the identity provider's answer to {client.client_id} has no token")
    return token


REALM_USERS = ("viewer", "operator", "admin")


def user_token(settings: CredentialsSettings, username: str) -> str:
    """A realm user's access token (the password grant of the public CLI client), with the
    password `make up` generated for the user."""
    password = read_secret(
        settings.secrets_dir() / f"{username}.password",
        f"the password of user {username}",
        "run `make up`, or set IDP_SECRETS_DIR to the stack's secrets/keycloak folder",
    )
    form = {
        "grant_type": "password",
        "client_id": settings.idp_cli_client_id,
        "username": username,
        "password": password.get_secret_value(),
    }
    with httpx.Client(timeout=settings.idp_timeout_s, verify=settings.tls_verify()) as http:
        response = _send(http, "POST", settings.token_endpoint(), data=form)
    if response.status_code != 200:
        raise CredentialsError(
            f"the identity provider refused a token to user {username}: {refusal(response)}"
        )
    token = response.json().get("access_token")
    if not isinstance(token, str) or not token:
        raise CredentialsError(f"the identity provider's answer to user {username} has no token")
    return token


def device_client_representation(device_id: str) -> dict[str, Any]:
    """The realm's client of one device: client credentials only, and a claim naming the device
    in every token it gets (the realm adds scope readings:write as optional, as to any client)."""
    return {
        "clientId": f"device-{device_id}",
        "name": f"Device {device_id}: its tokens carry {DEVICE_CLAIM}={device_id}",
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": False,
        "clientAuthenticatorType": "client-secret",
        "serviceAccountsEnabled": True,
        "standardFlowEnabled": False,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "attributes": {DEVICE_CLAIM: device_id},
        "protocolMappers": [
            {
                "name": DEVICE_CLAIM,
                "protocol": "openid-connect",
                "protocolMapper": "oidc-hardcoded-claim-mapper",
                "config": {
                    "claim.name": DEVICE_CLAIM,
                    "claim.value": device_id,
                    "jsonType.label": "String",
                    "access.token.claim": "true",
                    "id.token.claim": "false",
                    "introspection.token.claim": "true",
                },
            }
        ],
    }


def _find_client(http: httpx.Client, admin: str, headers: dict[str, str], client_id: str) -> Any:
    response = _send(
        http, "GET", f"{admin}/clients", params={"clientId": client_id}, headers=headers
    )
    if response.status_code != 200:
        raise CredentialsError(f"cannot list the realm's clients: {refusal(response)}")
    found = [c for c in response.json() if c.get("clientId") == client_id]
    return found[0] if found else None


def check_device_id(device_id: str) -> None:
    if not DEVICE_ID.match(device_id):
        raise CredentialsError(
            f"device id {device_id!r} cannot name a client: letters, digits and . _ : - only, "
            "starting with a letter or digit, at most 100"
        )


def realm_admin(http: httpx.Client, settings: CredentialsSettings) -> tuple[str, dict[str, str]]:
    """The realm's admin API and the provisioner's authorization for it (manage-clients)."""
    admin_token = client_credentials_token(http, settings, provisioner_client(settings), None)
    return settings.admin_url(), {"Authorization": f"Bearer {admin_token}"}


def device_client(http: httpx.Client, settings: CredentialsSettings, device_id: str) -> Client:
    """The device's own client and its secret, created in the realm if it is new (idempotent:
    two callers creating it at once both end with the one client)."""
    check_device_id(device_id)
    admin, headers = realm_admin(http, settings)
    representation = device_client_representation(device_id)
    client_id = representation["clientId"]
    found = _find_client(http, admin, headers, client_id)
    if found is None:
        created = _send(http, "POST", f"{admin}/clients", json=representation, headers=headers)
        # 409: another caller created it in between; it is the same client.
        if created.status_code not in (201, 409):
            raise CredentialsError(f"cannot create client {client_id}: {refusal(created)}")
        found = _find_client(http, admin, headers, client_id)
        if found is None:
            raise CredentialsError(f"client {client_id} is not in the realm after creating it")
    secret = _send(http, "GET", f"{admin}/clients/{found['id']}/client-secret", headers=headers)
    if secret.status_code != 200:
        raise CredentialsError(f"cannot read the secret of client {client_id}: {refusal(secret)}")
    return Client(client_id, SecretStr(secret.json()["value"]))


def remove_device_client(http: httpx.Client, settings: CredentialsSettings, device_id: str) -> bool:
    """Deletes the device's client, so that its secret gets no token any more (tokens already
    issued stay valid until they expire); False if there was none."""
    check_device_id(device_id)
    admin, headers = realm_admin(http, settings)
    found = _find_client(http, admin, headers, f"device-{device_id}")
    if found is None:
        return False
    deleted = _send(http, "DELETE", f"{admin}/clients/{found['id']}", headers=headers)
    if deleted.status_code not in (204, 404):
        raise CredentialsError(f"cannot delete client device-{device_id}: {refusal(deleted)}")
    return True


def access_token(settings: CredentialsSettings, scope: str, device_id: str | None = None) -> str:
    """An access token with that scope: the fleet's, or bound to one device."""
    with httpx.Client(timeout=settings.idp_timeout_s, verify=settings.tls_verify()) as http:
        if device_id is None:
            client = fleet_client(settings)
        else:
            client = device_client(http, settings, device_id)
        return client_credentials_token(http, settings, client, scope)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argument_parser(
        prog="python -m tools.credentials",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    token = commands.add_parser(
        "token",
        help="print an access token for the HTTP ingest API",
        description="Print an access token (JWT) from the identity provider, one line on "
        "standard output: with --scope for the HTTP ingest API, with --user a user's for the "
        "admin API.",
    )
    whose = token.add_mutually_exclusive_group(required=True)
    whose.add_argument("--scope", help="the scopes asked for, space-separated: readings:write")
    whose.add_argument(
        "--user", choices=REALM_USERS, help="a user's token for the admin API (its realm roles)"
    )
    token.add_argument(
        "--device", metavar="ID", help="bind the token to this device (claim device_id)"
    )
    add_device_commands(commands)
    add_database_command(commands)
    add_kafka_command(commands)
    return parser.parse_args(argv)


# --- Kafka users (tools.kafka_accounts) -----------------------------------------------------------


def add_kafka_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kafka = commands.add_parser(
        "kafka",
        help="librdkafka-style key=value settings of a SCRAM user of Kafka's SASL_SSL listener",
        description="Print bootstrap.servers, security.protocol, sasl.mechanisms, "
        "sasl.username, sasl.password and ssl.ca.location, one key=value a line, for one user: "
        + "; ".join(f"{name}: {what}" for name, what in USERS.items())
        + ". The listener is KAFKA_SASL_HOST:KAFKA_SASL_PORT (127.0.0.1:9094), the password "
        "the stack's secrets/kafka-USER.password (STACK_DIR), the CA TLS_CA_FILE's.",
    )
    kafka.add_argument("--user", default="operator", choices=sorted(USERS))


def kafka_settings(user: str) -> int:
    try:
        credentials = credentials_for(user, KafkaAccountsSettings())
    except ValidationError as error:
        problems = settings_problems(error, KafkaAccountsSettings)
        sys.stderr.write(f"tools.credentials: bad settings\n{problems}\n")
        return 2
    except ConfigurationError as error:
        sys.stderr.write(f"tools.credentials kafka: {error}\n")
        return 2
    sys.stdout.write(credentials.properties())
    return 0


# --- database roles (tools.db_accounts) ---------------------------------------------------------


def add_database_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    database = commands.add_parser(
        "database",
        help="a PostgreSQL DSN for a role of least privilege (TLS, verify-full)",
        description="Print postgresql://ROLE:PASSWORD@HOST:PORT/DB?sslmode=verify-full&... "
        "for one role: "
        + "; ".join(f"{name}: {what}" for name, what in ROLES.items())
        + ". Host, port and database come from DATABASE_URL if set (else the local stack's), "
        "the CA from TLS_CA_FILE.",
    )
    database.add_argument("--role", required=True, choices=sorted(ROLES))
    database.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        help="the stack's secrets folder (default: <repo>/.stack/secrets, as `make up` writes)",
    )


def database_dsn(role: str, secrets_dir: Path | None) -> int:
    try:
        dsn = dsn_for(role, PipelineSettings(service_name="credentials"), secrets_dir)
    except ConfigurationError as error:
        sys.stderr.write(f"tools.credentials database: {error}\n")
        return 2
    sys.stdout.write(dsn + "\n")
    return 0


# --- MQTT accounts (tools.mqtt_accounts) ----------------------------------------------------------


def add_device_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`device` and `revoke`: a device's account on Mosquitto's TLS listener."""
    device = commands.add_parser(
        "device", help="print a device's MQTT credentials as JSON, registering it if new"
    )
    device.add_argument("device_id")
    revoke = commands.add_parser(
        "revoke", help="delete a device's MQTT account; its next connect is refused"
    )
    revoke.add_argument("device_id")


def mqtt_account(command: str, device_id: str) -> str:
    """The JSON line `device` or `revoke` prints."""
    settings = MqttAccountsSettings()
    if command == "device":
        credentials = asyncio.run(register_device(settings, device_id))
        return orjson.dumps(credentials.as_json()).decode()
    revoked = asyncio.run(revoke_device(settings, device_id))
    return orjson.dumps({"device_id": device_id, "revoked": revoked}).decode()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "database":
        return database_dsn(args.role, args.secrets_dir)
    if args.command == "kafka":
        return kafka_settings(args.user)
    if args.command in ("device", "revoke"):
        try:
            sys.stdout.write(mqtt_account(args.command, args.device_id) + "\n")
        except ValidationError as error:
            problems = settings_problems(error, MqttAccountsSettings)
            sys.stderr.write(f"tools.credentials: bad settings\n{problems}\n")
            return 2
        except PipelineError as exc:
            sys.stderr.write(f"tools.credentials {args.command}: {exc}\n")
            return 1 if exc.retriable else 2
        return 0
    try:
        settings = CredentialsSettings()
    except ValidationError as error:
        problems = settings_problems(error, CredentialsSettings)
        sys.stderr.write(f"tools.credentials: bad settings\n{problems}\n")
        return 2
    if args.user and args.device:
        sys.stderr.write("tools.credentials token: --device goes with --scope, not --user\n")
        return 2
    try:
        if args.user:
            token = user_token(settings, args.user)
        else:
            token = access_token(settings, args.scope, args.device)
    except PipelineError as exc:
        sys.stderr.write(f"tools.credentials {args.command}: {exc}\n")
        return 1 if exc.retriable else 2
    sys.stdout.write(token + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
