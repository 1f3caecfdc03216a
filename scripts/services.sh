# Sourced by scripts/dev and scripts/test: makes PostgreSQL and Redis reachable and exports
# DATABASE_URL and REDIS_URL.
#
# - DATABASE_URL / REDIS_URL set: used as they are.
# - Otherwise the default local ports (5432, 6379) are used when something answers there.
# - Otherwise private instances are started under .local/ (ports 54329 and 63799), after
#   installing Debian's postgresql / redis-server packages when their binaries are missing.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
mkdir -p "$LOCAL"

say() { echo "[services] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    say "installing $* from Debian's packages"
    if [ -z "${APT_UPDATED:-}" ]; then
        as_root apt-get update -qq >&2 || true
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

pg_bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1
}

start_private_postgres() {
    local port=54329 data="$LOCAL/pg/data" run="$LOCAL/pg/run" bin
    bin="$(pg_bindir)"
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        apt_install postgresql postgresql-client
        bin="$(pg_bindir)"
    fi
    mkdir -p "$LOCAL/pg" "$run"
    # PostgreSQL refuses to run as root: run it as the postgres system user then.
    local runas=()
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir "$LOCAL/pg" postgres
        chown -R postgres "$LOCAL/pg"
        runas=(runuser -u postgres --)
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        say "initialising a private PostgreSQL in $data"
        "${runas[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    if ! port_open 127.0.0.1 "$port"; then
        say "starting a private PostgreSQL on 127.0.0.1:$port"
        "${runas[@]}" "$bin/pg_ctl" -D "$data" -l "$LOCAL/pg/postgres.log" -w \
            -o "-p $port -k $run -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null
    fi
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/billing"
}

start_private_redis() {
    local port=63799
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server
    fi
    mkdir -p "$LOCAL/redis"
    if ! port_open 127.0.0.1 "$port"; then
        say "starting a private Redis on 127.0.0.1:$port"
        redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
            --dir "$LOCAL/redis" --logfile "$LOCAL/redis/redis.log" >/dev/null
        for _ in $(seq 50); do port_open 127.0.0.1 "$port" && break; sleep 0.1; done
    fi
    export REDIS_URL="redis://127.0.0.1:$port"
}

ensure_services() {
    if [ -z "${DATABASE_URL:-}" ]; then
        if port_open 127.0.0.1 5432; then
            export DATABASE_URL="postgres://postgres@127.0.0.1:5432/billing"
            say "using PostgreSQL on 127.0.0.1:5432"
        else
            start_private_postgres
        fi
    else
        say "using DATABASE_URL from the environment"
    fi
    if [ -z "${REDIS_URL:-}" ]; then
        if port_open 127.0.0.1 6379; then
            export REDIS_URL="redis://127.0.0.1:6379"
            say "using Redis on 127.0.0.1:6379"
        else
            start_private_redis
        fi
    else
        say "using REDIS_URL from the environment"
    fi
}

# A stable local application secret for development, created once.
ensure_app_secret() {
    if [ -z "${APP_SECRET:-}" ]; then
        if [ ! -s "$LOCAL/app_secret" ]; then
            head -c 48 /dev/urandom | base64 | tr -d '\n/+=' > "$LOCAL/app_secret"
        fi
        APP_SECRET="$(cat "$LOCAL/app_secret")"
        export APP_SECRET
    fi
}

# `pdftotext` (Debian's poppler-utils): the invoice PDF test reads the text back with it.
ensure_pdftotext() {
    if ! command -v pdftotext >/dev/null 2>&1; then
        apt_install poppler-utils
    fi
}

# Python tools the tests use, in a virtual environment under .local/: the `standardwebhooks`
# library verifies delivered webhooks, `localstripe` stands in for Stripe's products API, and
# `schemathesis` (pinned: its checks decide a test) tests the API against its OpenAPI document.
# Exports TEST_PYTHON.
ensure_python_tools() {
    local venv="$LOCAL/venv"
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    if [ ! -x "$venv/bin/python" ]; then
        say "creating a Python environment in $venv"
        python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
    fi
    local schemathesis=4.32.5
    if ! "$venv/bin/python" -c "import standardwebhooks, localstripe" 2>/dev/null \
        || [ "$("$venv/bin/st" --version 2>/dev/null)" != "st, version $schemathesis" ]; then
        say "installing standardwebhooks, localstripe and schemathesis from PyPI"
        "$venv/bin/pip" install --quiet --disable-pip-version-check standardwebhooks localstripe \
            "schemathesis==$schemathesis" >&2
    fi
    export TEST_PYTHON="$venv/bin/python"
}
