{{/* Postgres bootstrap: the wrapper script and the idempotent SQL. Context: root. */}}
{{- define "exchange.postgresql.bootstrapScript" -}}
#!/bin/sh
# Starts Postgres through the image's entrypoint (first boot: initdb and the
# image's init scripts), then applies bootstrap.sql once the real server accepts
# TCP connections (the first-boot temporary server listens on the socket only).
set -eu
rm -f /tmp/bootstrapped
docker-entrypoint.sh "$@" &
pg=$!
# Kubernetes sends SIGTERM; Postgres' fast shutdown is SIGINT.
trap 'kill -INT "$pg" 2>/dev/null || true' TERM INT
until pg_isready -q -h 127.0.0.1 -p {{ .Values.postgresql.port }} -U postgres; do
  if ! kill -0 "$pg" 2>/dev/null; then wait "$pg"; exit $?; fi
  sleep 1
done
if psql -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p {{ .Values.postgresql.port }} -U postgres \
     -d "$POSTGRES_DB" -f /bootstrap/bootstrap.sql; then
  touch /tmp/bootstrapped
  echo "bootstrap.sql applied: roles and schemas ready"
else
  echo "bootstrap.sql failed; stopping Postgres" >&2
  kill -INT "$pg"
fi
status=0
while kill -0 "$pg" 2>/dev/null; do wait "$pg" || status=$?; done
exit "$status"
{{- end -}}

{{- define "exchange.postgresql.bootstrapSQL" -}}
{{- $users := include "exchange.usersOf" (dict "root" $ "flag" "database") | fromYamlArray -}}
-- One role and one schema per service; each role may use only its own schema.
-- Idempotent: runs on every start (passwords follow the Secret). Needs psql >= 15.
\set ON_ERROR_STOP on
SELECT 'CREATE EXTENSION IF NOT EXISTS timescaledb'
 WHERE EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')\gexec
REVOKE ALL ON DATABASE {{ $.Values.postgresql.database }} FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
{{- range $name := $users }}
{{- $svc := include "exchange.svc" (dict "root" $ "name" $name) | fromYaml }}
{{- $role := $svc.database.role }}
{{- if not (regexMatch "^[a-z_][a-z0-9_]{0,62}$" $role) }}
{{- fail (printf "services.%s.database.role %q is not a plain lowercase SQL identifier" $name $role) }}
{{- end }}

-- {{ $name }}
\getenv password {{ $name | upper | replace "-" "_" }}_PASSWORD
SELECT 'CREATE ROLE {{ $role }} LOGIN'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{{ $role }}')\gexec
ALTER ROLE {{ $role }} WITH LOGIN PASSWORD :'password';
GRANT CONNECT, TEMPORARY ON DATABASE {{ $.Values.postgresql.database }} TO {{ $role }};
CREATE SCHEMA IF NOT EXISTS {{ $role }} AUTHORIZATION {{ $role }};
ALTER SCHEMA {{ $role }} OWNER TO {{ $role }};
REVOKE ALL ON SCHEMA {{ $role }} FROM PUBLIC;
{{- end }}
{{- with $.Values.postgresql.metrics }}
{{- if .enabled }}

-- the metrics exporter (postgresql.metrics): statistics only (pg_monitor), no
-- password, so it can log in over the pod's loopback (trusted) and nowhere else
SELECT 'CREATE ROLE {{ .role }} LOGIN'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{{ .role }}')\gexec
ALTER ROLE {{ .role }} WITH LOGIN PASSWORD NULL CONNECTION LIMIT 5;
GRANT pg_monitor TO {{ .role }};
GRANT CONNECT ON DATABASE {{ $.Values.postgresql.database }} TO {{ .role }};
{{- end }}
{{- end }}
\unset password
{{- end -}}
