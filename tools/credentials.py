"""`python -m tools.credentials`: credentials of the local stack for operators and tests.

    python -m tools.credentials device <device_id>   one JSON object: device_id, mqtt_url,
                                                     username, password, ca_file (registers
                                                     the device if it is new; idempotent)
    python -m tools.credentials revoke <device_id>   deletes the device's MQTT account

The MQTT accounts are those of Mosquitto's TLS listener (tools.mqtt_accounts); the settings
(STACK_DIR, MQTT_TLS_PORT, TLS_CA_FILE, MQTT_ADMIN_PASSWORD) default to what `make up` made.
A refusal exits 1 with one line on stderr; an unreachable broker exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import orjson

from libs.common.cli import argument_parser
from libs.common.errors import AccountError, ConfigurationError, MqttUnavailable
from tools.mqtt_accounts import MqttAccountsSettings, register_device, revoke_device


def _print_json(value: object) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


def cmd_device(args: argparse.Namespace) -> None:
    credentials = asyncio.run(register_device(MqttAccountsSettings(), args.device_id))
    _print_json(credentials.as_json())


def cmd_revoke(args: argparse.Namespace) -> None:
    revoked = asyncio.run(revoke_device(MqttAccountsSettings(), args.device_id))
    _print_json({"device_id": args.device_id, "revoked": revoked})


def add_device_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`device` and `revoke` (MQTT accounts of devices)."""
    device = commands.add_parser(
        "device", help="print a device's MQTT credentials as JSON, registering it if new"
    )
    device.add_argument("device_id")
    device.set_defaults(run=cmd_device)
    revoke = commands.add_parser(
        "revoke", help="delete a device's MQTT account; its next connect is refused"
    )
    revoke.add_argument("device_id")
    revoke.set_defaults(run=cmd_revoke)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(
        "python -m tools.credentials", "Credentials of the local stack, for operators and tests."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_device_commands(commands)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (AccountError, ConfigurationError) as error:
        sys.stderr.write(f"credentials {args.command}: {error}\n")
        return 1
    except MqttUnavailable as error:
        sys.stderr.write(f"credentials {args.command}: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
