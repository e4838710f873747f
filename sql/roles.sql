-- pg_mec: API roles (cluster-wide, so created only when missing; never dropped by the extension).
--   mec_user     an end user of the vendor's app: reads its own account only
--   mec_service  the vendor's backend: check, meter, leases, reads in its namespace (member of mec_user)
--   mec_admin    the vendor's operator: catalog, provisioning, corrections (member of mec_service)
--   mec_authenticator  LOGIN NOINHERIT: what the gateway connects as; switches with SET ROLE
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
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_authenticator') THEN
        CREATE ROLE mec_authenticator LOGIN NOINHERIT;
    END IF;
END
$roles$;

GRANT mec_user TO mec_service;
GRANT mec_service TO mec_admin;
GRANT mec_user, mec_service, mec_admin TO mec_authenticator;
