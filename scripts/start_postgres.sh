#!/usr/bin/env bash
# Start the machine's PostgreSQL cluster and make the role and database the tests use.
# Idempotent. Prints the URL to use as ETL_TEST_PG_URL.
set -euo pipefail
# Only the URL goes to stdout: everything the tools print (for example pg_ctlcluster's
# "Removed stale pid file.") goes to stderr, so "$(bash start_postgres.sh)" is the URL.
# No extra descriptor is opened on stdout: the postmaster would inherit it and keep the
# caller's "$(...)" waiting forever.
setup() {
ROLE=${ETL_PG_ROLE:-etl}
PASSWORD=${ETL_PG_PASSWORD:-etl}
DB=${ETL_PG_DB:-etl_test}

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters --no-header | head -n 1)
if [ -z "${VERSION:-}" ]; then
  VERSION=$(ls /usr/lib/postgresql | sort -n | tail -n 1); CLUSTER=main
  pg_createcluster "$VERSION" "$CLUSTER" >/dev/null
  read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters --no-header | head -n 1)
fi
if [ "$STATUS" != "online" ]; then
  pg_ctlcluster "$VERSION" "$CLUSTER" start </dev/null
fi
for _ in $(seq 1 30); do
  pg_isready -q -p "$PORT" -h localhost && break
  sleep 1
done
psql_su() { su postgres -c "psql -p $PORT -v ON_ERROR_STOP=1 -qtA $*"; }
# Change-data-capture (postgres-cdc sources) reads the write-ahead log through logical
# replication: wal_level must be logical, which takes a restart to change.
if [ "$(psql_su "-c 'SHOW wal_level'")" != "logical" ]; then
  psql_su "-c 'ALTER SYSTEM SET wal_level = logical'"
  psql_su "-c 'ALTER SYSTEM SET max_replication_slots = 32'"
  psql_su "-c 'ALTER SYSTEM SET max_wal_senders = 32'"
  pg_ctlcluster "$VERSION" "$CLUSTER" restart </dev/null
  for _ in $(seq 1 30); do
    pg_isready -q -p "$PORT" -h localhost && break
    sleep 1
  done
fi
if [ "$(psql_su "-c \"SELECT 1 FROM pg_roles WHERE rolname='$ROLE'\"")" != "1" ]; then
  psql_su "-c \"CREATE ROLE $ROLE LOGIN SUPERUSER PASSWORD '$PASSWORD'\""
fi
if [ "$(psql_su "-c \"SELECT 1 FROM pg_database WHERE datname='$DB'\"")" != "1" ]; then
  psql_su "-c \"CREATE DATABASE $DB OWNER $ROLE\""
fi
URL="postgresql://$ROLE:$PASSWORD@localhost:$PORT/$DB"
}
setup >&2
echo "$URL"
