#!/usr/bin/env bash
# Runs once, when the official postgres image initialises an empty volume.
# Creates pg_mec in $POSTGRES_DB, gives the gateway's role a login, loads the
# demo namespace, catalog and account (ids from the environment).
set -euo pipefail
: "${MEC_AUTHENTICATOR_PASSWORD:?set MEC_AUTHENTICATOR_PASSWORD}"
: "${MEC_DEMO_NAMESPACE_ID:=00000000-0000-4000-8000-00000000d3e0}"
: "${MEC_DEMO_ACCOUNT_ID:=00000000-0000-4000-8000-0000000acc00}"

psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-mec}" \
  -v pw="$MEC_AUTHENTICATOR_PASSWORD" -v ns="$MEC_DEMO_NAMESPACE_ID" -v acct="$MEC_DEMO_ACCOUNT_ID" \
  -v file=/usr/share/pg_mec/demo/catalog.json <<'SQL'
CREATE EXTENSION IF NOT EXISTS pg_mec CASCADE;
SELECT 'CREATE ROLE mec_authenticator LOGIN NOINHERIT'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_authenticator') \gexec
ALTER ROLE mec_authenticator LOGIN PASSWORD :'pw';
\set cat `cat :'file'`
SELECT mec.create_namespace(p_name => 'demo', p_namespace_id => :'ns'::uuid);
SET mec.namespace_id = :'ns';
SELECT mec.load_catalog(p_catalog => :'cat'::jsonb);
SELECT mec.provision_plan(p_account_id => :'acct'::uuid, p_plan_id => 'starter',
                          p_external_id => 'demo-user', p_idempotency_key => 'docker-init-demo');
SQL
