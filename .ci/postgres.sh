# Sourced by .ci/run: a throwaway PostgreSQL server on 127.0.0.1 for the multi-machine
# sweep test (tests/test_sweep_workers.py), from Debian's packages. Best effort: when apt
# or the server is unavailable, CI goes on and that test skips, saying why.
# Exports TRAINPIPE_TEST_POSTGRES_URL; the server stops when the calling shell exits.

_pg_start() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "not root: cannot apt-get install postgresql"; return 1; }
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >/dev/null 2>&1 \
      || { echo "apt-get install postgresql failed"; return 1; }
  fi
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  PG_DIR=$(mktemp -d /tmp/trainpipe-pg.XXXXXX)
  PG_AS=()
  if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root
    chown postgres "$PG_DIR" && PG_AS=(runuser -u postgres --) || return 1
  fi
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || return 1
  "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U trainpipe >"$PG_DIR/initdb.log" 2>&1 \
    || { echo "initdb failed (see $PG_DIR/initdb.log)"; return 1; }
  "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR" start >/dev/null \
    || { echo "the server did not start (see $PG_DIR/server.log)"; return 1; }
  trap '"${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1; rm -rf "$PG_DIR"' EXIT
  "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U trainpipe trainpipe_test || { echo "createdb failed"; return 1; }
  export TRAINPIPE_TEST_POSTGRES_URL="postgresql://trainpipe@127.0.0.1:$port/trainpipe_test"
  echo "PostgreSQL for the sweep tests: $TRAINPIPE_TEST_POSTGRES_URL"
}

_pg_start || echo "PostgreSQL unavailable: the PostgreSQL sweep test will skip." >&2
