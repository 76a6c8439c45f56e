#!/bin/bash
# ClickHouse's own entrypoint, after checking the secrets and exporting the Grafana user's
# password for users.d/grafana.xml (<password from_env=...>): the image reads a password file
# only for CLICKHOUSE_USER (CLICKHOUSE_PASSWORD_FILE), and an empty password would leave a user
# without one.
set -euo pipefail

for secret in "$CLICKHOUSE_PASSWORD_FILE" /run/secrets/clickhouse_grafana_password; do
    if [ ! -s "$secret" ] || [ -z "$(tr -d '[:space:]' < "$secret")" ]; then
        echo "$0: the secret $secret is missing or empty (see deploy/README.md, Secrets)" >&2
        exit 1
    fi
done

CLICKHOUSE_GRAFANA_PASSWORD="$(cat /run/secrets/clickhouse_grafana_password)"
export CLICKHOUSE_GRAFANA_PASSWORD

exec /entrypoint.sh "$@"
