#!/usr/bin/env bash
# Debian packages some tests use: Chromium + ChromeDriver (the browser tests), Fashion-MNIST, and
# PostgreSQL, iproute2 and curl (the multi-host tests: network namespaces with shared services).
# Installed when missing and we may (root with apt-get); otherwise say which tests will skip.
set -uo pipefail
missing=()
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || missing+=(chromium chromium-driver)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v ip >/dev/null || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "system: installing ${missing[*]} (apt-get)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
    >/dev/null 2>&1 || echo "system: could not install ${missing[*]}; their tests will skip" >&2
else
  echo "system: ${missing[*]} missing (apt-get install ${missing[*]}); their tests will skip" >&2
fi
exit 0
