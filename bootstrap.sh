#!/usr/bin/env bash
# Set up this machine for g5kdeploy (idempotent): Debian packages for the embedded testbed
# (OpenSSH, TakTuk, OAR 2.5.9 + PostgreSQL, iperf3, ...) and a venv with the project.
# Services are not started here: `invoke testbed-up` starts them, `invoke testbed-destroy`
# stops them. Needs root for the packages (the local testbed needs root anyway).
set -euo pipefail
cd "$(dirname "$0")"
PACKAGES=(openssh-server openssh-client taktuk netcat-traditional iproute2 iputils-ping iperf3 procps
          util-linux postgresql oar-server oar-server-pgsql oar-user oar-user-pgsql oar-node
          libjson-perl libyaml-perl
          itamae qemu-system-x86 qemu-utils redis-server python3-redis python3-zstandard e2fsprogs xz-utils
          ncbi-blast+ python3-distributed sudo mmdebstrap python3-cryptography
          swift swift-proxy swift-object swift-container swift-account
          openjdk-17-jre-headless python3-boto3 python3-pip nftables)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "bootstrap: installing ${missing[*]} needs root: run sudo ./bootstrap.sh" >&2; exit 1; }
  echo "bootstrap: apt-get install ${missing[*]}"
  # no service may start on its own during the install: the testbed starts what it needs
  blocker=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && blocker=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    > /tmp/g5kdeploy-apt.log 2>&1 || { tail -30 /tmp/g5kdeploy-apt.log >&2; exit 1; }
  [ -z "$blocker" ] || rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import g5kdeploy, execo, hostlist, invoke, pandas, pyarrow, rich, pytest, grid5000, enoslib" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "bootstrap: pip install -e .[test]"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
  touch .venv/.installed
fi
# Spark for Resilin's engine where the nodes see it (their root is an overlay of this one's);
# the version is the nimbus-vmm role's, which installs it the same way on Grid'5000 nodes
read -r PYSPARK PY4J < <(.venv/bin/python -c 'import json; a = json.load(open("cookbooks/roles/nimbus-vmm.json"))["default_attributes"]["g5kdeploy"]; print(a["pyspark"], a["py4j"])')
if [ ! -f "/opt/g5kdeploy/spark/pyspark-$PYSPARK.dist-info/METADATA" ]; then
  echo "bootstrap: pyspark $PYSPARK into /opt/g5kdeploy/spark"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --target /opt/g5kdeploy/spark \
    "pyspark==$PYSPARK" "py4j==$PY4J"
fi
# its JVMs' class-data-sharing archive (made once per Spark and JVM build; ~40 s)
.venv/bin/python -m g5kdeploy.resilin.cds --check || .venv/bin/python -m g5kdeploy.resilin.cds
echo "bootstrap: ready (.venv/bin/invoke --list)"
