/// The queue's tables, indexes and triggers, as versioned migrations.
///
/// Applied by `Migrator` (component "queue"); never edit a released migration, add one.
public enum QueueSchema {
    public static let component = "queue"

    public static let migrations: [Migration] = [
        Migration(version: 1, name: "jobs", statements: [
            #"""
            CREATE TABLE loco_jobs (
                id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                queue            text        NOT NULL,
                kind             text        NOT NULL,
                args             jsonb       NOT NULL DEFAULT '{}',
                state            text        NOT NULL,
                priority         smallint    NOT NULL DEFAULT 0,
                attempt          integer     NOT NULL DEFAULT 0,
                max_attempts     integer     NOT NULL DEFAULT 10,
                run_at           timestamptz NOT NULL DEFAULT now(),
                created_at       timestamptz NOT NULL DEFAULT now(),
                attempted_at     timestamptz,
                finalized_at     timestamptz,
                locked_by        text,
                lease_expires_at timestamptz,
                cancel_requested boolean     NOT NULL DEFAULT false,
                unique_key       text,
                pending_deps     integer     NOT NULL DEFAULT 0,
                has_dependents   boolean     NOT NULL DEFAULT false,
                errors           jsonb       NOT NULL DEFAULT '[]',
                CONSTRAINT loco_jobs_state_check CHECK (state IN ('blocked','scheduled','available','running','completed','failed','cancelled')),
                CONSTRAINT loco_jobs_max_attempts_check CHECK (max_attempts BETWEEN 1 AND 1000),
                CONSTRAINT loco_jobs_running_is_locked CHECK (state <> 'running' OR (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL))
            ) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
            """#,
            #"""
            -- The claim path reads only this index: available jobs of one queue in claim order.
            CREATE INDEX loco_jobs_claim ON loco_jobs (queue, priority, run_at, id) WHERE state = 'available';
            """#,
            #"""
            CREATE INDEX loco_jobs_due ON loco_jobs (run_at) WHERE state = 'scheduled';
            """#,
            #"""
            CREATE INDEX loco_jobs_leases ON loco_jobs (lease_expires_at) WHERE state = 'running';
            """#,
            #"""
            CREATE INDEX loco_jobs_finalized ON loco_jobs (finalized_at) WHERE state IN ('completed','failed','cancelled');
            """#,
            #"""
            -- Uniqueness holds while a job is live; a finished job frees its key.
            CREATE UNIQUE INDEX loco_jobs_unique_live ON loco_jobs (unique_key)
                WHERE unique_key IS NOT NULL AND state IN ('blocked','scheduled','available','running');
            """#,
            #"""
            CREATE TABLE loco_job_dependencies (
                job_id     bigint NOT NULL REFERENCES loco_jobs (id) ON DELETE CASCADE,
                depends_on bigint NOT NULL REFERENCES loco_jobs (id) ON DELETE CASCADE,
                PRIMARY KEY (depends_on, job_id)
            );
            """#,
            #"""
            CREATE INDEX loco_job_dependencies_job ON loco_job_dependencies (job_id);
            """#,
            #"""
            -- One row per periodic job: the newest slot already enqueued, so several schedulers
            -- (and system cron) never enqueue the same slot twice, even after the job is pruned.
            CREATE TABLE loco_cron_slots (
                name       text PRIMARY KEY,
                last_slot  timestamptz NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            );
            """#,
            #"""
            -- Settling dependents runs inside the transaction that finishes the parent, whatever
            -- finished it (a worker, the rescuer, an operator), so a DAG never sees half a step.
            CREATE FUNCTION loco_jobs_settle_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
                woken text;
            BEGIN
                IF NEW.state = 'completed' THEN
                    FOR woken IN
                        WITH released AS (
                            UPDATE loco_jobs j
                            SET pending_deps = j.pending_deps - 1,
                                state = CASE WHEN j.pending_deps > 1 THEN 'blocked'
                                             WHEN j.run_at > now() THEN 'scheduled'
                                             ELSE 'available' END
                            FROM loco_job_dependencies d
                            WHERE d.depends_on = NEW.id AND j.id = d.job_id AND j.state = 'blocked'
                            RETURNING j.queue, j.state
                        )
                        SELECT DISTINCT queue FROM released WHERE state = 'available'
                    LOOP
                        PERFORM pg_notify('loco_jobs', woken);
                    END LOOP;
                ELSE
                    UPDATE loco_jobs j
                    SET state = 'cancelled', finalized_at = now(),
                        errors = j.errors || jsonb_build_array(jsonb_build_object(
                            'attempt', j.attempt, 'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), 'worker', NULL, 'class', 'permanent',
                            'code', 'dependency_failed',
                            'message', format('job %s, which this job depends on, ended %s', NEW.id, NEW.state),
                            'detail', NULL))
                    FROM loco_job_dependencies d
                    WHERE d.depends_on = NEW.id AND j.id = d.job_id
                      AND j.state IN ('blocked', 'scheduled', 'available');
                END IF;
                RETURN NULL;
            END;
            $$;
            """#,
            settleDependentsTrigger,
        ]),
        // Table CHECK constraints are compiled again for every statement that writes a row
        // (PostgreSQL 15 plans their expressions per query), which cost a single-row enqueue
        // about 20 µs of its ~200 µs; domain constraints are cached across statements. The
        // same rules move to domains; "running implies locked" is kept by the claim statement,
        // the only one that makes a job running. Changing the column type needs the trigger
        // that names the column off for a moment, and rebuilds the indexes on `state`.
        Migration(version: 2, name: "domains_instead_of_checks", statements: [
            #"""
            CREATE DOMAIN loco_job_state AS text
                CHECK (VALUE IN ('blocked','scheduled','available','running','completed','failed','cancelled'))
            """#,
            "CREATE DOMAIN loco_job_max_attempts AS integer CHECK (VALUE BETWEEN 1 AND 1000)",
            "DROP TRIGGER loco_jobs_settle_dependents ON loco_jobs",
            #"""
            ALTER TABLE loco_jobs
                DROP CONSTRAINT loco_jobs_state_check,
                DROP CONSTRAINT loco_jobs_max_attempts_check,
                DROP CONSTRAINT loco_jobs_running_is_locked,
                ALTER COLUMN state TYPE loco_job_state,
                ALTER COLUMN max_attempts TYPE loco_job_max_attempts
            """#,
            settleDependentsTrigger,
        ]),
        // A queue is paused while it has a row here: workers claim nothing from it, the jobs
        // they already run finish, and enqueues still land (River's and Oban's pause).
        Migration(version: 3, name: "queue_pauses", statements: [
            #"""
            CREATE TABLE loco_queue_pauses (
                queue     text        PRIMARY KEY,
                paused_at timestamptz NOT NULL DEFAULT now(),
                paused_by text
            )
            """#,
        ]),
        // Workers that hold a presence lock while they live: a session advisory lock on their
        // heartbeat connection, which PostgreSQL drops the moment the process dies (its socket
        // closes). A running job whose worker is listed here but whose lock nobody holds has
        // lost its worker: the rescuer cuts its lease short instead of waiting all of it out.
        Migration(version: 4, name: "worker_presence", statements: [
            #"""
            CREATE TABLE loco_workers (
                id         text        PRIMARY KEY,
                started_at timestamptz NOT NULL DEFAULT now(),
                seen_at    timestamptz NOT NULL DEFAULT now()
            )
            """#,
        ]),
        // What stats and /metrics count without reading the whole table (which holds every
        // finished job for the retention period): blocked jobs by queue, and failures by time.
        // Both states are rare, so the indexes cost writes only when a job enters them.
        Migration(version: 5, name: "stats_indexes", statements: [
            "CREATE INDEX loco_jobs_blocked ON loco_jobs (queue) WHERE state = 'blocked'",
            "CREATE INDEX loco_jobs_failed ON loco_jobs (finalized_at) INCLUDE (queue) WHERE state = 'failed'",
        ]),
        // Which queues each worker process works, for 'locod queue workers' and for telling an
        // operator who pauses a queue that nothing works it (a typo).
        Migration(version: 6, name: "worker_queues", statements: [
            "ALTER TABLE loco_workers ADD COLUMN queues text[] NOT NULL DEFAULT '{}'",
        ]),
        // What an operator changed of a periodic job at run time ('locod cron set|pause'): read by
        // every scheduler at each tick, so a change needs no redeploy and no restart.
        Migration(version: 7, name: "cron_settings", statements: [
            """
            CREATE TABLE loco_cron_settings (
                name text PRIMARY KEY,
                schedule text,
                paused_at timestamptz,
                changed_by text,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ]),
        // Concurrency an operator set at run time ('locod queue scale'), for every worker of a
        // queue (worker '') or for one, and a queue's limit across all workers ('locod queue
        // limit'): read by each worker when notified and every few seconds.
        Migration(version: 8, name: "queue_scales", statements: [
            """
            CREATE TABLE loco_queue_scales (
                queue text NOT NULL,
                worker text NOT NULL DEFAULT '',
                concurrency integer NOT NULL CONSTRAINT loco_queue_scales_concurrency CHECK (concurrency BETWEEN 1 AND 10000),
                changed_by text,
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (queue, worker)
            )
            """,
            """
            CREATE TABLE loco_queue_limits (
                queue text PRIMARY KEY,
                global_limit integer NOT NULL CONSTRAINT loco_queue_limits_range CHECK (global_limit BETWEEN 1 AND 100000),
                changed_by text,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ]),
        // Unique keys held for a period after enqueue ('uniqueFor', '--unique-for'): which job
        // holds each key, and until when. Kept apart from loco_jobs.unique_key (keys held only
        // while live). No foreign key: a holder pruned before its period ended still holds it.
        Migration(version: 9, name: "unique_periods", statements: [
            """
            CREATE TABLE loco_unique_periods (
                unique_key text PRIMARY KEY,
                job_id bigint NOT NULL,
                held_until timestamptz NOT NULL
            )
            """,
            "CREATE INDEX loco_unique_periods_held_until ON loco_unique_periods (held_until)",
        ]),
        // Workers behind a transaction-mode pooler (poll-only) hold no session, so no presence
        // lock: they touch a row every second instead, and one unseen for its grace is gone.
        // Apart from loco_workers, so a rescuer of an older version (which takes a listed worker
        // without a lock for dead) never cuts their leases. Unlogged: the rows say only who is
        // alive now, they are rewritten every second, and a crash that empties the table is
        // repaired by the next touch.
        Migration(version: 10, name: "worker_beats", statements: [
            """
            CREATE UNLOGGED TABLE loco_worker_beats (
                id         text        PRIMARY KEY,
                instance   text        NOT NULL,
                queues     text[]      NOT NULL DEFAULT '{}',
                started_at timestamptz NOT NULL DEFAULT now(),
                seen_at    timestamptz NOT NULL DEFAULT now(),
                gone_after interval    NOT NULL,
                stopped_at timestamptz,
                cuts       bigint      NOT NULL DEFAULT 0
            )
            """,
        ]),
        // A wake-up that commits inside its own statement (`WakeUpsAfterCommit.wakeUpCall`, for
        // connections without a `SingleEnqueueHandler`): PostgreSQL refuses a NOTIFY at commit,
        // and a refusal that comes after the statement's answer is dropped by PostgresNIO; in
        // the CALL it is the statement's error.
        Migration(version: 11, name: "wake_up_procedure", statements: [
            """
            CREATE PROCEDURE loco_wake_up(queues text[]) LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('loco_jobs', queue) FROM unnest(queues) AS queue;
                COMMIT;
            END
            $$
            """,
        ]),
        // Releasing a completed job's dependents notifies only where the completion has not
        // said it wakes their queues after its commit (`JobStatements.Record`, which sets
        // loco.wake_after_commit for its transaction): a NOTIFY refused at the commit rolled the
        // completion back, and with a full NOTIFY queue no job with dependents could complete.
        Migration(version: 12, name: "settle_dependents_quietly", statements: [
            #"""
            CREATE OR REPLACE FUNCTION loco_jobs_settle_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
                woken text;
            BEGIN
                IF NEW.state = 'completed' THEN
                    FOR woken IN
                        WITH released AS (
                            UPDATE loco_jobs j
                            SET pending_deps = j.pending_deps - 1,
                                state = CASE WHEN j.pending_deps > 1 THEN 'blocked'
                                             WHEN j.run_at > now() THEN 'scheduled'
                                             ELSE 'available' END
                            FROM loco_job_dependencies d
                            WHERE d.depends_on = NEW.id AND j.id = d.job_id AND j.state = 'blocked'
                            RETURNING j.queue, j.state
                        )
                        SELECT DISTINCT queue FROM released WHERE state = 'available'
                    LOOP
                        IF current_setting('loco.wake_after_commit', true) IS DISTINCT FROM 'on' THEN
                            PERFORM pg_notify('loco_jobs', woken);
                        END IF;
                    END LOOP;
                ELSE
                    UPDATE loco_jobs j
                    SET state = 'cancelled', finalized_at = now(),
                        errors = j.errors || jsonb_build_array(jsonb_build_object(
                            'attempt', j.attempt, 'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), 'worker', NULL, 'class', 'permanent',
                            'code', 'dependency_failed',
                            'message', format('job %s, which this job depends on, ended %s', NEW.id, NEW.state),
                            'detail', NULL))
                    FROM loco_job_dependencies d
                    WHERE d.depends_on = NEW.id AND j.id = d.job_id
                      AND j.state IN ('blocked', 'scheduled', 'available');
                END IF;
                RETURN NULL;
            END;
            $$;
            """#,
        ]),
    ]

    static let settleDependentsTrigger = #"""
        CREATE TRIGGER loco_jobs_settle_dependents
            AFTER UPDATE OF state ON loco_jobs
            FOR EACH ROW
            WHEN (NEW.has_dependents AND OLD.state IS DISTINCT FROM NEW.state
                  AND NEW.state IN ('completed', 'failed', 'cancelled'))
            EXECUTE FUNCTION loco_jobs_settle_dependents();
        """#
}
