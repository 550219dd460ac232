import LocoQueue

/// The domain's tables, applied with the queue's by `Migrator` (component "core").
/// Never edit a released migration; add one.
public enum CoreSchema {
    public static let component = "core"

    public static let migrations: [Migration] = [
        Migration(version: 1, name: "domain", statements: [
            // One timestamp format for every JSON the database builds: RFC 3339, UTC, milliseconds.
            #"""
            CREATE FUNCTION loco_rfc3339(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE STRICT
            AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$
            """#,
            """
            CREATE TABLE loco_teams (
                id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                name       text        NOT NULL UNIQUE CHECK (name ~ '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'),
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE loco_users (
                id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                email      text        NOT NULL UNIQUE,
                name       text        NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE loco_memberships (
                team_id    bigint      NOT NULL REFERENCES loco_teams ON DELETE CASCADE,
                user_id    bigint      NOT NULL REFERENCES loco_users ON DELETE CASCADE,
                role       text        NOT NULL CHECK (role IN ('owner','admin','developer','viewer')),
                created_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (team_id, user_id)
            )
            """,
            "CREATE INDEX loco_memberships_user ON loco_memberships (user_id)",
            """
            CREATE TABLE loco_apps (
                id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                team_id    bigint      NOT NULL REFERENCES loco_teams ON DELETE CASCADE,
                name       text        NOT NULL CHECK (name ~ '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'),
                type       text        NOT NULL CHECK (type IN ('service','static','redis','postgres','blob')),
                owner_id   bigint      REFERENCES loco_users ON DELETE SET NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (team_id, name)
            )
            """,
            """
            CREATE TABLE loco_deployments (
                id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                app_id           bigint      NOT NULL REFERENCES loco_apps ON DELETE CASCADE,
                state            text        NOT NULL CHECK (state IN ('queued','building','pushing','applying','waiting','succeeded','failed','cancelled')),
                in_line          boolean     NOT NULL DEFAULT false,
                queued_behind    bigint,
                created_by       bigint      REFERENCES loco_users ON DELETE SET NULL,
                config           jsonb       NOT NULL DEFAULT '{}',
                context_digest   text,
                context_bytes    bigint,
                image_digest     text,
                image_ref        text,
                stages           jsonb       NOT NULL DEFAULT '{}',
                report           jsonb,
                cancel_requested boolean     NOT NULL DEFAULT false,
                event_seq        bigint      NOT NULL DEFAULT 0,
                created_at       timestamptz NOT NULL DEFAULT now(),
                finished_at      timestamptz
            )
            """,
            // One deployment per app in flight; those waiting in line behind it are not counted.
            """
            CREATE UNIQUE INDEX loco_deployments_one_in_flight ON loco_deployments (app_id)
                WHERE state IN ('queued','building','pushing','applying','waiting') AND NOT in_line
            """,
            "CREATE INDEX loco_deployments_app ON loco_deployments (app_id, id DESC)",
            // The reconciler looks at what ended lately (contexts to delete).
            "CREATE INDEX loco_deployments_finished ON loco_deployments (finished_at) WHERE finished_at IS NOT NULL",
            """
            CREATE TABLE loco_deployment_jobs (
                deployment_id bigint NOT NULL REFERENCES loco_deployments ON DELETE CASCADE,
                job_id        bigint NOT NULL,
                stage         text   NOT NULL,
                service       text,
                PRIMARY KEY (deployment_id, job_id)
            )
            """,
            "CREATE INDEX loco_deployment_jobs_job ON loco_deployment_jobs (job_id)",
            """
            CREATE TABLE loco_deployment_events (
                deployment_id bigint      NOT NULL REFERENCES loco_deployments ON DELETE CASCADE,
                id            bigint      NOT NULL,
                at            timestamptz NOT NULL DEFAULT now(),
                type          text        NOT NULL,
                stage         text,
                message       text        NOT NULL,
                data          jsonb,
                PRIMARY KEY (deployment_id, id)
            )
            """,
            """
            CREATE TABLE loco_env_vars (
                app_id     bigint      NOT NULL REFERENCES loco_apps ON DELETE CASCADE,
                name       text        NOT NULL,
                value      text        NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (app_id, name)
            )
            """,
            """
            CREATE TABLE loco_tokens (
                id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                kind         text        NOT NULL CHECK (kind IN ('personal','deploy','pull','worker')),
                secret_hash  text        NOT NULL UNIQUE,
                hint         text        NOT NULL,
                name         text        NOT NULL,
                user_id      bigint      REFERENCES loco_users ON DELETE CASCADE,
                app_id       bigint      REFERENCES loco_apps ON DELETE CASCADE,
                created_at   timestamptz NOT NULL DEFAULT now(),
                expires_at   timestamptz,
                revoked_at   timestamptz,
                last_used_at timestamptz
            )
            """,
            "CREATE INDEX loco_tokens_user ON loco_tokens (user_id)",
        ]),
        Migration(version: 2, name: "deployment_url_and_images", statements: [
            // Where the deployed version answers, and each service's pushed image (multi-service apps).
            "ALTER TABLE loco_deployments ADD COLUMN url text, ADD COLUMN images jsonb NOT NULL DEFAULT '{}'::jsonb",
        ]),
        Migration(version: 3, name: "deployment_redeploy_of", statements: [
            // A redeploy (`loco rollback`) runs another deployment's pushed images again: no build, no push.
            "ALTER TABLE loco_deployments ADD COLUMN redeploy_of bigint REFERENCES loco_deployments (id) ON DELETE SET NULL",
        ]),
        Migration(version: 4, name: "pruned_images", statements: [
            // Images cleanup deleted from the registry: not asked for again by every later cleanup
            // (each one sent a DELETE for every image the app ever had), and refused to a redeploy
            // at once. A push of the same digest again takes it off the list.
            """
            CREATE TABLE loco_pruned_images (
                app_id    bigint NOT NULL REFERENCES loco_apps (id) ON DELETE CASCADE,
                digest    text NOT NULL,
                pruned_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (app_id, digest)
            )
            """,
        ]),
        Migration(version: 5, name: "app_scale", statements: [
            // `loco scale`: replica counts set for an app's services, over loco.toml's
            // `min_replicas`, for every later rollout (a deploy, rollback or restart) until reset.
            """
            CREATE TABLE loco_app_scale (
                app_id     bigint NOT NULL REFERENCES loco_apps (id) ON DELETE CASCADE,
                service    text NOT NULL,
                replicas   integer NOT NULL CHECK (replicas BETWEEN 1 AND 100),
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (app_id, service)
            )
            """,
            // The counts a deployment's apply stage ran, fixed when it first ran, so its wait stage
            // (and an apply run again after a crash) expects the same even if the scale changes meanwhile.
            "ALTER TABLE loco_deployments ADD COLUMN replicas jsonb",
        ]),
        Migration(version: 6, name: "deployment_reason", statements: [
            // Why a deployment without a build was made ("rollback to 27", "env: set A, B",
            // "scaling web to 3 replicas"), for the history, as `heroku releases` says.
            "ALTER TABLE loco_deployments ADD COLUMN reason text",
        ]),
    ]
}
