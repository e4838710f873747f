-- pg_mec: API roles (cluster-wide, so created only when missing; never dropped by the extension).
--   mec_user     an end user of the vendor's app: reads its own account only
--   mec_service  the vendor's backend: check, meter, leases, reads in its namespace (member of mec_user)
--   mec_admin    the vendor's operator: catalog, provisioning, corrections (member of mec_service)
--   mec_authenticator  LOGIN NOINHERIT: what the gateway connects as; switches with SET ROLE
--   mec_webhook  NOLOGIN: what the gateway receives Stripe and Auth0 webhooks as; may only hand them
--                to pg_mec, which checks each against the namespace's own secret
--   mec_worker   NOLOGIN: the gateway's background jobs (usage to Stripe); may list the namespaces
--                that asked for them and run those jobs there
--   mec_owner    NOLOGIN, no members: the role pg_mec's functions act as while they change the tables
--                (pg_mec/src/pg/owner.rs); the API roles themselves may only read them (docs/security.md)
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_user') THEN
        CREATE ROLE mec_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_service') THEN
        CREATE ROLE mec_service NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_admin') THEN
        CREATE ROLE mec_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_webhook') THEN
        CREATE ROLE mec_webhook NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_worker') THEN
        CREATE ROLE mec_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_authenticator') THEN
        CREATE ROLE mec_authenticator LOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_owner') THEN
        CREATE ROLE mec_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
END
$roles$;

-- Whatever mec_owner was before (a role of that name may predate the extension): it cannot log
-- in, bypass row-level security or be used by anyone through membership.
ALTER ROLE mec_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
DO $owner$
DECLARE
    m text;
BEGIN
    FOR m IN SELECT r.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.member
             WHERE a.roleid = 'mec_owner'::regrole
    LOOP
        EXECUTE format('REVOKE mec_owner FROM %I', m);
        RAISE WARNING 'pg_mec: revoked mec_owner from %: nobody may act as mec_owner but pg_mec''s functions', m;
    END LOOP;
END
$owner$;

GRANT mec_user TO mec_service;
GRANT mec_service TO mec_admin;
GRANT mec_user, mec_service, mec_admin, mec_webhook, mec_worker TO mec_authenticator;
