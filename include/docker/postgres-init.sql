-- Mounted into /docker-entrypoint-initdb.d/ of the postgres service (docker-compose.yaml).
-- The postgres image runs it once, as POSTGRES_USER, when the data volume is first initialised.
-- POSTGRES_DB already created the Airflow metadata database `airflow`; this adds the audience-sync
-- state database (run history, sync state, metrics), reached through the `audience_sync_db` connection.
-- Its tables are created by audience-sync itself, not here.
-- On an existing volume this script does not run again: `docker compose down -v` resets the volume,
-- or run the statement below by hand with psql.

SELECT 'CREATE DATABASE audience_sync'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'audience_sync')\gexec
