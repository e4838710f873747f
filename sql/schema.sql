-- pg_mec: tables (private schema mec_data).
--
-- Rule: every primary key, unique key and foreign key leads with namespace_id, so the schema
-- can be distributed by namespace later (Citus / PL/Proxy) without a redesign.
-- pg_mec/tests/pgtap/01_schema_keys.sql checks this over pg_constraint.

CREATE SCHEMA mec_data;
COMMENT ON SCHEMA mec_data IS 'pg_mec private tables: reach them through schema mec (functions and views)';

-- Domains instead of table CHECK constraints on the columns the hot paths write: PostgreSQL
-- re-reads and re-plans a table's CHECK constraints in every INSERT/UPDATE statement, while a
-- domain's check is part of the cached plan (and runs only where a value is assigned).
CREATE DOMAIN mec_data.idempotency_key AS text
    CHECK (VALUE <> '' AND length(VALUE) <= 255);
CREATE DOMAIN mec_data.entry_type AS text
    CHECK (VALUE IN ('usage', 'adjustment'));
CREATE DOMAIN mec_data.counter_slot AS smallint
    CHECK (VALUE >= 0);

-- One tenant: a SaaS vendor with its own catalog, customers and Stripe account.
CREATE TABLE mec_data.namespaces (
    namespace_id uuid        NOT NULL,
    name         text        NOT NULL CHECK (btrim(name) <> '' AND length(name) <= 200),
    settings     jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id)
);

-- The catalog document last loaded, kept whole (single source of truth) with its digest,
-- so that loading the same file twice is recognised and changes nothing.
CREATE TABLE mec_data.catalogs (
    namespace_id      uuid        NOT NULL,
    version           text,
    currency          text,
    document          jsonb       NOT NULL,
    digest            text        NOT NULL,
    billable_statuses jsonb       NOT NULL DEFAULT '["2xx", 422]',
    loaded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id),
    FOREIGN KEY (namespace_id) REFERENCES mec_data.namespaces (namespace_id) ON DELETE CASCADE
);

CREATE TABLE mec_data.resource_types (
    namespace_id      uuid NOT NULL,
    resource_type     text NOT NULL CHECK (resource_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    kind              text NOT NULL CHECK (kind IN ('metered', 'gauge', 'concurrency', 'rate', 'feature')),
    unit              text,
    description       text,
    window_seconds    integer CHECK (window_seconds BETWEEN 1 AND 86400),
    -- statuses that count when p_http_status is given: ["2xx", 422]; NULL = the catalog's default
    billable_statuses jsonb,
    -- the event_name of the Stripe meter its billable usage goes to (pg_mec/src/ops/stripe_usage.rs)
    stripe_meter_event text CHECK (length(stripe_meter_event) BETWEEN 1 AND 100),
    -- the dimensions its events may carry: {"model_class": ["BASE_S", ...]}; NULL = none
    dimensions        jsonb,
    CHECK ((kind = 'rate') = (window_seconds IS NOT NULL)),
    PRIMARY KEY (namespace_id, resource_type),
    FOREIGN KEY (namespace_id) REFERENCES mec_data.namespaces (namespace_id) ON DELETE CASCADE
);

CREATE TABLE mec_data.plans (
    namespace_id    uuid        NOT NULL,
    plan_id         text        NOT NULL CHECK (plan_id ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    name            text        NOT NULL,
    price_amount    numeric CHECK (price_amount >= 0),
    currency        text,
    price_interval  text CHECK (price_interval IN ('month', 'year')),
    stripe_price_id text,
    is_default      boolean     NOT NULL DEFAULT false,
    active          boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- the version new provisioning gets (mec_data.plan_versions keeps every version loaded)
    version         text        NOT NULL DEFAULT '1' CHECK (version <> ''),
    -- the plan's access policy (mec.check_policy), as validated by pg_mec_core::catalog::policy
    policy          jsonb,
    PRIMARY KEY (namespace_id, plan_id),
    UNIQUE (namespace_id, stripe_price_id),
    FOREIGN KEY (namespace_id) REFERENCES mec_data.namespaces (namespace_id) ON DELETE CASCADE
);

-- The limits a plan grants. Column names avoid "limit" (a reserved word and a PostgREST
-- query parameter): quantity_limit NULL = unlimited.
CREATE TABLE mec_data.plan_entitlements (
    namespace_id   uuid    NOT NULL,
    plan_id        text    NOT NULL,
    resource_type  text    NOT NULL,
    quantity_limit numeric CHECK (quantity_limit >= 0),
    period         text CHECK (period IN ('month', 'day', 'hour', 'lifetime')),
    enforcement    text    NOT NULL DEFAULT 'hard' CHECK (enforcement IN ('hard', 'soft', 'capped')),
    overage_cap    numeric CHECK (overage_cap >= 0),
    grace          numeric CHECK (grace >= 0),
    enabled        boolean NOT NULL DEFAULT true,
    -- limits per dimension value: {"model_class": {"PRO_L": {"limit": 1000000, ...}}} (ops/dimensions.rs)
    dimension_limits jsonb,
    PRIMARY KEY (namespace_id, plan_id, resource_type),
    FOREIGN KEY (namespace_id, plan_id) REFERENCES mec_data.plans (namespace_id, plan_id) ON DELETE CASCADE,
    FOREIGN KEY (namespace_id, resource_type) REFERENCES mec_data.resource_types (namespace_id, resource_type) ON DELETE CASCADE
);

-- Every version of a plan ever loaded, as loaded: what an account grandfathered on it keeps and
-- what mec.migrate_plan_version moves accounts to. entitlements: plan_entitlements rows as JSON.
-- explicit: the catalog named the version, so it may not be loaded again with other contents.
CREATE TABLE mec_data.plan_versions (
    namespace_id uuid        NOT NULL,
    plan_id      text        NOT NULL,
    version      text        NOT NULL CHECK (version <> ''),
    entitlements jsonb       NOT NULL,
    policy       jsonb,
    explicit     boolean     NOT NULL,
    loaded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, plan_id, version),
    FOREIGN KEY (namespace_id, plan_id) REFERENCES mec_data.plans (namespace_id, plan_id) ON DELETE CASCADE
);

-- A customer of the vendor.
CREATE TABLE mec_data.accounts (
    namespace_id       uuid        NOT NULL,
    account_id         uuid        NOT NULL,
    external_id        text CHECK (external_id <> ''),
    plan_id            text,
    plan_effective_at  timestamptz,
    stripe_customer_id text,
    payment_overdue    boolean     NOT NULL DEFAULT false,
    billing_anchor_day smallint CHECK (billing_anchor_day BETWEEN 1 AND 31),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- when the payment event that last set payment_overdue happened (a Stripe event's created):
    -- an older event delivered later does not change it
    payment_event_at   timestamptz,
    -- the version of plan_id the account is on (grandfathered until provisioned again or migrated)
    plan_version       text,
    -- its parent in the namespace's hierarchy (ops/hierarchy.rs); NULL: top-level
    parent_account_id  uuid CHECK (parent_account_id <> account_id),
    PRIMARY KEY (namespace_id, account_id),
    UNIQUE (namespace_id, external_id),
    UNIQUE (namespace_id, stripe_customer_id),
    FOREIGN KEY (namespace_id) REFERENCES mec_data.namespaces (namespace_id) ON DELETE CASCADE,
    FOREIGN KEY (namespace_id, plan_id) REFERENCES mec_data.plans (namespace_id, plan_id),
    FOREIGN KEY (namespace_id, parent_account_id) REFERENCES mec_data.accounts (namespace_id, account_id)
        ON DELETE SET NULL (parent_account_id)
);
CREATE INDEX accounts_children ON mec_data.accounts (namespace_id, parent_account_id)
    WHERE parent_account_id IS NOT NULL;

-- An account's right to a resource over a validity window. source = 'plan' rows are copied
-- from the plan at provisioning; 'override' replaces the plan's limit; 'grant' adds quantity.
CREATE TABLE mec_data.entitlements (
    namespace_id    uuid        NOT NULL,
    entitlement_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    account_id      uuid        NOT NULL,
    resource_type   text        NOT NULL,
    source          text        NOT NULL CHECK (source IN ('plan', 'override', 'grant')),
    plan_id         text,
    quantity_limit  numeric CHECK (quantity_limit >= 0),
    period          text CHECK (period IN ('month', 'day', 'hour', 'lifetime')),
    enforcement     text        NOT NULL DEFAULT 'hard' CHECK (enforcement IN ('hard', 'soft', 'capped')),
    overage_cap     numeric CHECK (overage_cap >= 0),
    grace           numeric CHECK (grace >= 0),
    enabled         boolean     NOT NULL DEFAULT true,
    valid_from      timestamptz NOT NULL,
    valid_until     timestamptz CHECK (valid_until > valid_from),
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    plan_version    text,  -- source = 'plan': the plan version the row was copied from
    dimension_limits jsonb, -- source = 'plan': the plan's limits per dimension value
    PRIMARY KEY (namespace_id, entitlement_id),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE,
    FOREIGN KEY (namespace_id, resource_type) REFERENCES mec_data.resource_types (namespace_id, resource_type) ON DELETE CASCADE
);
CREATE INDEX entitlements_lookup
    ON mec_data.entitlements (namespace_id, account_id, resource_type, valid_from);

-- Usage per account x resource x period. A period resets by moving to a new key (period_start),
-- never by a job. Usage is the sum over slots. Slot 0 is the counter; slots > 0 are stripes of a
-- hot counter, each consuming only the quota slot 0 granted it (escrow): stripe_quota on slot 0 is
-- the sum of the stripes' quotas, and slot 0's guard counts it, so the total never passes the
-- ceiling (see pg_mec/src/counters/stripes.rs).
-- fillfactor leaves room for HOT updates: no indexed column changes on the hot path.
CREATE TABLE mec_data.usage_counters (
    namespace_id  uuid        NOT NULL,
    account_id    uuid        NOT NULL,
    resource_type text        NOT NULL,
    period_start  timestamptz NOT NULL,
    slot          mec_data.counter_slot NOT NULL DEFAULT 0,
    period_end    timestamptz,
    used          numeric     NOT NULL DEFAULT 0,
    quota         numeric,                          -- stripes: what they may use; NULL = unbounded
    stripe_quota  numeric     NOT NULL DEFAULT 0,   -- slot 0: sum of the stripes' quotas
    striped       boolean     NOT NULL DEFAULT false, -- slot 0: stripes may hold usage or quota
    stripe_limit  numeric,                          -- slot 0: the limit the quotas were granted under
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- slot 0: a reservation has held quota here (reads then leave out expired holds)
    has_holds     boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (namespace_id, account_id, resource_type, period_start, slot),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
) WITH (fillfactor = 70);

-- The append-only ledger. One row per recorded event; the idempotency key is the primary key
-- (unique per namespace). Corrections are new rows (entry_type 'adjustment'), never edits.
-- quantity_used / quantity_allowed record the counter after the event, so a replay returns the
-- original result without recomputing it.
CREATE TABLE mec_data.consumption (
    namespace_id     uuid        NOT NULL,
    idempotency_key  mec_data.idempotency_key NOT NULL,
    consumption_id   uuid        NOT NULL,
    account_id       uuid        NOT NULL,
    resource_type    text        NOT NULL,
    entry_type       mec_data.entry_type NOT NULL DEFAULT 'usage',
    quantity         numeric     NOT NULL,
    occurred_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz,
    billable         boolean     NOT NULL,
    overage          boolean     NOT NULL DEFAULT false,
    overage_quantity numeric     NOT NULL DEFAULT 0,
    quantity_used    numeric,
    quantity_allowed numeric,
    http_status      integer,
    metadata         jsonb       NOT NULL DEFAULT '{}',
    reason           text,
    -- the event's dimensions ({"model_class": "PRO_L"}); NULL = none
    dimensions       jsonb,
    PRIMARY KEY (namespace_id, idempotency_key)
);
CREATE INDEX consumption_by_account
    ON mec_data.consumption (namespace_id, account_id, occurred_at);
-- mec.purge_expired finds old rows by when they were recorded: the ledger is appended in that order,
-- so a BRIN index finds them for a fraction of a B-tree's upkeep on every meter call.
CREATE INDEX consumption_recorded ON mec_data.consumption USING brin (recorded_at);

-- Ledger detail past the namespace's history retention, rolled up per account × resource × UTC day
-- of occurred_at × period × entry type × billability × dimensions by mec.purge_expired: totals,
-- history (by day, month or dimension) and as-of answers after the purge horizon read these with
-- the detail that is left.
CREATE TABLE mec_data.consumption_rollups (
    namespace_id   uuid        NOT NULL,
    account_id     uuid        NOT NULL,
    resource_type  text        NOT NULL,
    day            date        NOT NULL,
    period_start   timestamptz NOT NULL,
    entry_type     mec_data.entry_type NOT NULL,
    billable       boolean     NOT NULL,
    dimensions     jsonb       NOT NULL DEFAULT '{}',
    quantity       numeric     NOT NULL,
    events         bigint      NOT NULL CHECK (events > 0),
    -- the latest recorded_at rolled in: an as-of answer counts the day from then on
    recorded_until timestamptz NOT NULL,
    PRIMARY KEY (namespace_id, account_id, resource_type, day, period_start, entry_type, billable, dimensions)
);

-- Rate windows (kind = 'rate'): an exact sliding log per account × counter (the resource, or
-- <resource>@<dimension>=<value> for a dimension-scoped limit), kept UNLOGGED so that counting a
-- request writes no WAL beyond its ledger row. A crash empties both tables; the next event of a
-- window rebuilds it from the ledger (counters/rate.rs). The row of rate_windows is locked by
-- each event of its window (callers take turns) and keeps the running total; rate_entries keeps
-- each counted event with the running total through it in time order, so the usage after any
-- instant is total - (the running total at that instant): two index probes.
CREATE UNLOGGED TABLE mec_data.rate_windows (
    namespace_id uuid        NOT NULL,
    account_id   uuid        NOT NULL,
    counter      text        NOT NULL,
    -- every quantity counted since the window was built
    total        numeric     NOT NULL DEFAULT 0,
    -- the running total of the entries dropped (at or before kept_from)
    base         numeric     NOT NULL DEFAULT 0,
    -- entries after this instant are all kept; earlier events are summed from the ledger
    kept_from    timestamptz NOT NULL,
    -- entries numbered so far (rate_entries.seq)
    seq          bigint      NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, account_id, counter)
);
CREATE UNLOGGED TABLE mec_data.rate_entries (
    namespace_id uuid        NOT NULL,
    account_id   uuid        NOT NULL,
    counter      text        NOT NULL,
    at           timestamptz NOT NULL,
    -- in the order entries of the window came: among entries at one instant, a later one has the
    -- larger running total, so (at, seq) orders cum
    seq          bigint      NOT NULL,
    quantity     numeric     NOT NULL,
    cum          numeric     NOT NULL,
    PRIMARY KEY (namespace_id, account_id, counter, at, seq)
);

-- Held slots of concurrency resources. A lease counts while released_at IS NULL and
-- expires_at > now(); an expired lease frees its slot at once, even before expire_stale_leases.
CREATE TABLE mec_data.leases (
    namespace_id    uuid        NOT NULL,
    lease_id        uuid        NOT NULL DEFAULT gen_random_uuid(),
    account_id      uuid        NOT NULL,
    resource_type   text        NOT NULL,
    holder          text,
    idempotency_key mec_data.idempotency_key,
    acquired_at     timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    released_at     timestamptz,
    release_reason  text CHECK (release_reason IN ('released', 'expired')),
    PRIMARY KEY (namespace_id, lease_id),
    UNIQUE (namespace_id, idempotency_key),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX leases_active
    ON mec_data.leases (namespace_id, account_id, resource_type, expires_at)
    WHERE released_at IS NULL;

-- Results of idempotent administrative calls (provision_plan, set_override, grant_credits):
-- the same key and payload returns the stored result; another payload is ME409.
CREATE TABLE mec_data.idempotency_keys (
    namespace_id    uuid        NOT NULL,
    operation       text        NOT NULL,
    idempotency_key mec_data.idempotency_key NOT NULL,
    fingerprint     text        NOT NULL,
    result          jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, operation, idempotency_key)
);

-- What was done, by whom, without personal data.
CREATE TABLE mec_data.audit_log (
    namespace_id uuid        NOT NULL,
    audit_id     bigint      GENERATED ALWAYS AS IDENTITY,
    action       text        NOT NULL,
    actor        text        NOT NULL DEFAULT current_user,
    subject      text,
    details      jsonb       NOT NULL DEFAULT '{}',
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, audit_id)
);

-- Login roles that use pg_mec's API roles from SQL, other than the gateway's authenticator, the
-- database owner and superusers: each acts only in the namespaces the database owner bound it to
-- (mec.bind_role), as the API role it was bound as; a mec_user binding also pins the account. Read
-- by pg_mec/src/pg/context.rs as mec_owner, which sees only the session user's own rows (rls.sql).
CREATE TABLE mec_data.role_bindings (
    namespace_id uuid        NOT NULL,
    role_name    text        NOT NULL CHECK (role_name <> ''),
    api_role     text        NOT NULL CHECK (api_role IN ('mec_user', 'mec_service', 'mec_admin')),
    account_id   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((api_role = 'mec_user') = (account_id IS NOT NULL)),
    PRIMARY KEY (namespace_id, role_name),
    FOREIGN KEY (namespace_id) REFERENCES mec_data.namespaces (namespace_id) ON DELETE CASCADE,
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX role_bindings_by_role ON mec_data.role_bindings (role_name);

-- Namespace secrets live apart from settings so that only mec_admin (and the owner) can read them.
CREATE TABLE mec_data.namespace_secrets (
    namespace_id          uuid NOT NULL,
    stripe_webhook_secret text,
    auth0_secret          text,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    stripe_api_key        text,
    PRIMARY KEY (namespace_id),
    FOREIGN KEY (namespace_id) REFERENCES mec_data.namespaces (namespace_id) ON DELETE CASCADE
);

-- Quota held for work whose size is known only afterwards. A held reservation has already added
-- its quantity to the counter of its period; commit replaces it by the actual quantity and writes
-- the ledger row (under the reservation's idempotency key); cancel or expiry gives it back.
CREATE TABLE mec_data.reservations (
    namespace_id    uuid        NOT NULL,
    reservation_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    idempotency_key mec_data.idempotency_key NOT NULL,
    account_id      uuid        NOT NULL,
    resource_type   text        NOT NULL,
    quantity        numeric     NOT NULL CHECK (quantity > 0),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz,
    expires_at      timestamptz NOT NULL,
    state           text        NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'committed', 'cancelled', 'expired')),
    actual_quantity numeric,
    created_at      timestamptz NOT NULL DEFAULT now(),
    settled_at      timestamptz,
    PRIMARY KEY (namespace_id, reservation_id),
    UNIQUE (namespace_id, idempotency_key),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX reservations_held
    ON mec_data.reservations (namespace_id, account_id, resource_type, period_start, expires_at)
    WHERE state = 'held';

-- Stripe events received: the inbox. One row per (namespace, event id), written in the transaction
-- that applies the event, so a redelivery is recognised and changes nothing. Events for no known
-- account wait here as 'unmatched' until a checkout links their customer (pg_mec/src/ops/stripe.rs).
CREATE TABLE mec_data.stripe_events (
    namespace_id uuid        NOT NULL,
    event_id     text        NOT NULL CHECK (event_id <> '' AND length(event_id) <= 255),
    event_type   text        NOT NULL,
    created      timestamptz NOT NULL,
    livemode     boolean     NOT NULL DEFAULT false,
    customer_id  text,
    account_id   uuid,
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'stale', 'ignored', 'unmatched')),
    detail       text,
    payload      jsonb       NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    applied_at   timestamptz,
    PRIMARY KEY (namespace_id, event_id)
);
CREATE INDEX stripe_events_unmatched
    ON mec_data.stripe_events (namespace_id, customer_id, created) WHERE outcome = 'unmatched';
CREATE INDEX stripe_events_by_account ON mec_data.stripe_events (namespace_id, account_id);

-- Each Stripe subscription seen, with the state of the newest event applied to it: an event
-- created before that one is stale and changes nothing (Stripe does not deliver in order).
CREATE TABLE mec_data.stripe_subscriptions (
    namespace_id    uuid        NOT NULL,
    subscription_id text        NOT NULL CHECK (subscription_id <> ''),
    account_id      uuid        NOT NULL,
    customer_id     text,
    status          text        NOT NULL,
    price_id        text,
    plan_id         text,
    anchor_day      smallint CHECK (anchor_day BETWEEN 1 AND 31),
    event_id        text        NOT NULL,
    event_created   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, subscription_id),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX stripe_subscriptions_by_account ON mec_data.stripe_subscriptions (namespace_id, account_id);

-- Auth0 log events acted on (sign-ups, deletions): one row per (namespace, log id), written in the
-- transaction that acts on it, so a redelivered batch changes nothing. Other log types (logins,
-- failures) are counted in the answer and not kept. No payload: Auth0 logs carry IPs and emails.
CREATE TABLE mec_data.auth0_events (
    namespace_id uuid        NOT NULL,
    log_id       text        NOT NULL CHECK (log_id <> '' AND length(log_id) <= 255),
    event_type   text        NOT NULL,
    user_id      text,
    account_id   uuid,
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'ignored')),
    detail       text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, log_id)
);
CREATE INDEX auth0_events_by_account ON mec_data.auth0_events (namespace_id, account_id);

-- Usage on its way to Stripe (the outbox): one row per Stripe Billing meter event or cancellation
-- pg_mec sends, created before it is sent and marked after, so a crash between the two resends the
-- same identifier (also the request's Idempotency-Key), never a new one. A replacement waits for the
-- cancellation of the event it replaces (waits_for).
CREATE TABLE mec_data.stripe_usage_outbox (
    namespace_id       uuid        NOT NULL,
    identifier         text        NOT NULL CHECK (identifier <> '' AND length(identifier) <= 100),
    kind               text        NOT NULL CHECK (kind IN ('meter_event', 'cancel')),
    account_id         uuid        NOT NULL,
    resource_type      text        NOT NULL,
    period_start       timestamptz NOT NULL,
    event_name         text        NOT NULL,
    stripe_customer_id text        NOT NULL,
    value              numeric     NOT NULL,
    event_timestamp    timestamptz NOT NULL,
    cancels            text,
    waits_for          text,
    state              text        NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'sent', 'parked', 'cancelled', 'nothing_to_send')),
    attempts           integer     NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    last_status        integer,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    CHECK ((kind = 'cancel') = (cancels IS NOT NULL)),
    PRIMARY KEY (namespace_id, identifier),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX stripe_usage_due
    ON mec_data.stripe_usage_outbox (namespace_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX stripe_usage_by_counter
    ON mec_data.stripe_usage_outbox (namespace_id, account_id, resource_type, period_start);

-- Which ledger rows each outbox row carries. A ledger row is in at most one (the primary key), so no
-- unit is sent twice; a ledger row in none is not yet sent.
CREATE TABLE mec_data.stripe_usage_items (
    namespace_id    uuid NOT NULL,
    idempotency_key mec_data.idempotency_key NOT NULL,
    identifier      text NOT NULL,
    PRIMARY KEY (namespace_id, idempotency_key),
    FOREIGN KEY (namespace_id, identifier) REFERENCES mec_data.stripe_usage_outbox (namespace_id, identifier) ON DELETE CASCADE
);
CREATE INDEX stripe_usage_items_by_event ON mec_data.stripe_usage_items (namespace_id, identifier);

-- Outbound webhooks (pg_mec/src/events/): the endpoints a namespace registered, the events pg_mec
-- emitted, one delivery per event and endpoint. An event and its deliveries are written in the
-- transaction that caused them (the usage that crossed a threshold, the plan change), so a rolled
-- back call emits nothing and a committed one is delivered even if the gateway was down.
CREATE TABLE mec_data.webhook_endpoints (
    namespace_id uuid        NOT NULL,
    endpoint_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    url          text        NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    -- Standard Webhooks: "whsec_" + base64 of the key
    secret       text        NOT NULL CHECK (secret LIKE 'whsec\_%'),
    -- empty: every event type
    event_types  text[]      NOT NULL DEFAULT '{}',
    description  text        CHECK (length(description) <= 500),
    enabled      boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, endpoint_id),
    FOREIGN KEY (namespace_id) REFERENCES mec_data.namespaces (namespace_id) ON DELETE CASCADE
);

-- Each crossing of a usage alert (a catalog threshold in percent of the limit, or the limit itself
-- for usage.limit_reached), once per account × resource × period × threshold: the primary key.
CREATE TABLE mec_data.alert_crossings (
    namespace_id   uuid        NOT NULL,
    account_id     uuid        NOT NULL,
    resource_type  text        NOT NULL,
    period_start   timestamptz NOT NULL,
    event_type     text        NOT NULL CHECK (event_type IN ('usage.threshold_crossed', 'usage.limit_reached')),
    threshold      numeric     NOT NULL,
    period_end     timestamptz,
    quantity_limit numeric     NOT NULL,
    quantity_used  numeric     NOT NULL,
    consumption_id uuid,
    event_id       uuid        NOT NULL,
    crossed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, account_id, resource_type, period_start, event_type, threshold),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);

CREATE TABLE mec_data.webhook_events (
    namespace_id uuid        NOT NULL,
    -- webhook-id is "msg_" + this id without dashes
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL,
    account_id   uuid,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, event_id),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX webhook_events_by_time ON mec_data.webhook_events (namespace_id, created_at);

CREATE TABLE mec_data.webhook_deliveries (
    namespace_id    uuid        NOT NULL,
    delivery_id     uuid        NOT NULL DEFAULT gen_random_uuid(),
    event_id        uuid        NOT NULL,
    endpoint_id     uuid        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, delivery_id),
    UNIQUE (namespace_id, event_id, endpoint_id),
    FOREIGN KEY (namespace_id, event_id) REFERENCES mec_data.webhook_events (namespace_id, event_id) ON DELETE CASCADE,
    FOREIGN KEY (namespace_id, endpoint_id) REFERENCES mec_data.webhook_endpoints (namespace_id, endpoint_id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_due
    ON mec_data.webhook_deliveries (namespace_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON mec_data.webhook_deliveries (namespace_id, endpoint_id);
