#!/bin/bash
# The real-world test: a PostgreSQL cluster owned by the postgres user lives
# on drfs (allow_other): initdb, start, load with pgbench, query, stop, and
# the data directory is intact and owned by postgres in the backing tree.
. "$(dirname "$0")/lib.sh"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || skip "no PostgreSQL server binaries (make deps installs postgresql)"
id postgres >/dev/null 2>&1 || skip "no postgres user"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M" allow_other
chmod 755 "$T"
mkdir -p "$M/pg" "$T/sock"
chown postgres:postgres "$M/pg" "$T/sock"
pg() { runuser -u postgres -- "$@"; }
PORT=54329
require "initdb on drfs" pg "$PGBIN/initdb" -D "$M/pg/data" --no-locale -E UTF8 -A trust -U postgres >"$T/initdb.log"
check_eq "data directory owned by postgres in the backing" postgres \
	"$(stat -c %U "$B/pg/data/PG_VERSION")"
check_eq "initdb left the data directory private" 700 "$(stat -c %a "$M/pg/data")"
require "postgres starts" pg "$PGBIN/pg_ctl" -D "$M/pg/data" -l "$T/sock/pg.log" -w -t 60 \
	-o "-k $T/sock -p $PORT -c listen_addresses=''" start
pgpid=$(head -1 "$M/pg/data/postmaster.pid" 2>/dev/null)
[ -n "$pgpid" ] && PIDS+=("$pgpid")
q() { pg "$PGBIN/psql" -h "$T/sock" -p $PORT -U postgres -X -A -t -q -c "$1" postgres; }
check "pgbench initialises" pg "$PGBIN/pgbench" -h "$T/sock" -p $PORT -U postgres -i -s 2 -q postgres
check "pgbench runs 2000 transactions" pg "$PGBIN/pgbench" -h "$T/sock" -p $PORT -U postgres -c 4 -t 500 -n postgres
check_eq "rows loaded" 200000 "$(q 'select count(*) from pgbench_accounts')"
check_eq "transactions recorded" 2000 "$(q 'select count(*) from pgbench_history')"
q "checkpoint"
check "postgres stops" pg "$PGBIN/pg_ctl" -D "$M/pg/data" -w -t 60 -m fast stop
check "postgres restarts on the same data" pg "$PGBIN/pg_ctl" -D "$M/pg/data" -l "$T/sock/pg.log" -w -t 60 \
	-o "-k $T/sock -p $PORT -c listen_addresses=''" start
check_eq "data after restart" 2000 "$(q 'select count(*) from pgbench_history')"
check "amcheck-free consistency: sum of balances matches history" \
	eval "[ \"\$(q 'select sum(abalance) from pgbench_accounts')\" = \"\$(q 'select sum(delta) from pgbench_history')\" ]"
check "postgres stops again" pg "$PGBIN/pg_ctl" -D "$M/pg/data" -w -t 60 -m fast stop
check "no file in the backing tree owned by root" eval "[ -z \"\$(find $B/pg/data -user root)\" ]"
finish
