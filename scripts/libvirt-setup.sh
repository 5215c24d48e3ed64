#!/usr/bin/env bash
# Prepare this machine for Vigil's libvirt driver and its tests: install libvirtd, virsh and QEMU,
# prepare what a system without systemd lacks, and start virtlogd and libvirtd if they do not run.
# Idempotent: run it as often as you like. Needs root (it installs packages and starts daemons).
#
#   scripts/libvirt-setup.sh            # install if needed, start the daemons
#   scripts/libvirt-setup.sh --check    # only check; exit 0 if `virsh -c qemu:///system` works
#
# Exit status 0: `virsh -c qemu:///system version` answers. Otherwise the last line says why.
# Tested on Debian 12 (libvirt 9.0, QEMU 7.2). See docs/libvirt.md.
set -uo pipefail

URI="${VIGIL_LIBVIRT_URI:-qemu:///system}"
PACKAGES=(libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86)

say() { echo "libvirt-setup: $*"; }
fail() { echo "libvirt-setup: FAILED: $*"; exit 1; }

works() { timeout 20 virsh -q -c "$URI" version >/dev/null 2>&1; }

if [ "${1:-}" = "--check" ]; then
  if works; then say "ok: virsh -c $URI answers"; exit 0; fi
  fail "virsh -c $URI does not answer (run scripts/libvirt-setup.sh as root)"
fi

if works; then say "ok: libvirtd already answers on $URI"; exit 0; fi
[ "$(id -u)" = 0 ] || fail "not root: cannot install or start libvirtd"

# --- packages ---------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (about 100 MB)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || say "warning: apt-get update failed"
  # Package scripts may try to start services through systemd or invoke-rc.d: without systemd
  # that fails harmlessly, the daemons are started below.
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/libvirt-setup-apt.log 2>&1; then
    tail -5 /tmp/libvirt-setup-apt.log
    fail "apt-get install ${missing[*]} failed (log: /tmp/libvirt-setup-apt.log)"
  fi
fi
for b in virsh libvirtd virtlogd; do command -v "$b" >/dev/null || fail "$b is not installed"; done
ls /usr/bin/qemu-system-x86_64 >/dev/null 2>&1 || fail "qemu-system-x86_64 is not installed"

# --- what systemd would have prepared ---------------------------------------------------------
mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt /var/lib/libvirt/qemu /var/cache/libvirt
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
# QEMU runs as root without a security driver: containers have no AppArmor/SELinux to drive, and
# domain files on a datastore keep their ownership (dynamic_ownership off).
conf=/etc/libvirt/qemu.conf
want='user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"'
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  [ -f "$conf" ] && [ ! -f "$conf.vigil-orig" ] && cp "$conf" "$conf.vigil-orig"
  printf '%s\n' "$want" >"$conf"
  say "wrote $conf (the original is kept as $conf.vigil-orig)"
  # A running libvirtd reads qemu.conf only at its start.
  pidf=/var/run/libvirtd.pid
  if [ -s "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    say "restarting libvirtd (pid $(cat "$pidf")) for the new qemu.conf"
    kill "$(cat "$pidf")"
    for _ in $(seq 1 50); do kill -0 "$(cat "$pidf" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
  fi
fi

# --- daemons ----------------------------------------------------------------------------------
pgrep -x virtlogd >/dev/null || { virtlogd -d || fail "virtlogd did not start"; }
pgrep -x libvirtd >/dev/null || { libvirtd -d || fail "libvirtd did not start"; }
for _ in $(seq 1 50); do works && break; sleep 0.2; done
works || fail "libvirtd runs but virsh -c $URI does not answer (see /var/log/libvirt/)"
say "ok: $(virsh -q -c "$URI" version 2>/dev/null | grep -i 'running hypervisor' | sed 's/^ *//')"
