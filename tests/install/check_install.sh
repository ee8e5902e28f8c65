#!/usr/bin/env bash
# Checks what `cmake --install` and `cpack -G DEB` produce (cmake/OutpostInstall.cmake,
# docs/install.md). No TPM and no running systemd are needed: systemd's tools run offline on
# the installed tree.
#
# usage: check_install.sh layout|systemd|deb|dpkg BUILD_DIR WORK_DIR
#   layout   install with DESTDIR to a non-standard prefix; check files, modes, the paths the
#            unit and hook name, the sysusers/tmpfiles snippets, the config and the hook's contract
#   systemd  install to /usr in a DESTDIR; `systemd-analyze verify` and `security --offline`
#   deb      `cpack -G DEB`; control fields, Depends, conffiles, maintainer scripts, contents,
#            and the unpacked tree checked like `layout` and `systemd`
#   dpkg     the package from `deb` (in WORK_DIR/../deb/pkg) installed, upgraded, removed and
#            purged with dpkg in a throwaway overlay of / (a private mount namespace, so this
#            machine is untouched); needs root. Exit 77 (skipped) where that cannot be set up.
# CMAKE and CPACK name the tools (default: from PATH); OUTPOST_VERSION is the project's version.
set -euo pipefail

mode=${1:?usage: check_install.sh layout|systemd|deb|dpkg BUILD_DIR WORK_DIR}
build=${2:?build directory}
work=${3:?work directory}
cmake=${CMAKE:-cmake}
cpack=${CPACK:-cpack}

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
note() { echo "-- $*"; }

[[ -f $build/CMakeCache.txt ]] || fail "$build is not a configured build directory"
if [[ $mode != dpkg-inside ]]; then
  rm -rf "$work"
  mkdir -p "$work"
fi

# Installs the build into DESTDIR $1 with prefix $2.
install_into() {
  note "cmake --install $build --prefix $2 (DESTDIR=$1)"
  DESTDIR=$1 "$cmake" --install "$build" --prefix "$2" >"$work/install.log" 2>&1 ||
    { cat "$work/install.log" >&2; fail "cmake --install failed"; }
}

# The value of the first `KEY=` line of a unit file.
unit_value() { sed -n "s/^$2=//p" "$1" | head -n 1; }

# The layout below root $1 for prefix $2, as `cmake --install` and the package lay it out.
check_layout() {
  local root=$1 prefix=$2
  local bin=$root$prefix/bin unit=$root$prefix/lib/systemd/system/outpostd.service
  local hook=$prefix/libexec/outpost/outpost-prestart
  local f
  for f in outpost outpostd; do
    [[ -f $bin/$f && -x $bin/$f ]] || fail "$bin/$f is missing or not executable"
    [[ $(head -c 4 "$bin/$f" | od -An -c | tr -d ' ') == 177ELF ]] || fail "$bin/$f is not an ELF binary"
  done
  [[ -f $unit ]] || fail "no unit at $unit"
  [[ -f $root$hook && -x $root$hook ]] || fail "hook $root$hook is missing or not executable"
  [[ -f $root$prefix/lib/sysusers.d/outpost.conf ]] || fail "no sysusers.d/outpost.conf below $root$prefix/lib"
  [[ -f $root$prefix/lib/tmpfiles.d/outpost.conf ]] || fail "no tmpfiles.d/outpost.conf below $root$prefix/lib"
  [[ -f $root/etc/outpost/outpostd.yaml ]] || fail "no default configuration at $root/etc/outpost/outpostd.yaml"
  [[ -f $root$prefix/share/doc/outpost/install.md ]] || fail "docs/install.md is not installed"
  [[ $(stat -c %a "$unit") == 644 ]] || fail "unit mode is $(stat -c %a "$unit"), not 644"
  [[ $(stat -c %a "$root$hook") == 755 ]] || fail "hook mode is $(stat -c %a "$root$hook"), not 755"

  ! grep -n '@[A-Z_]*@' "$unit" "$root$hook" || fail "unsubstituted @VARIABLE@ left in the unit or hook"
  [[ $(unit_value "$unit" ExecStart) == "$prefix/bin/outpostd --config /etc/outpost/outpostd.yaml" ]] ||
    fail "ExecStart is '$(unit_value "$unit" ExecStart)'"
  [[ $(unit_value "$unit" ExecStartPre) == "$hook /etc/outpost/outpostd.yaml" ]] ||
    fail "ExecStartPre is '$(unit_value "$unit" ExecStartPre)'"
  grep -qx "outpost=$prefix/bin/outpost" "$root$hook" || fail "the hook does not run $prefix/bin/outpost"
  sh -n "$root$hook" || fail "the hook is not valid sh"

  # The hardening docs/install.md promises.
  local d
  for d in Type=notify User=outpost SupplementaryGroups=tss ProtectSystem=strict ProtectHome=yes \
    PrivateTmp=yes NoNewPrivileges=yes StateDirectory=outpost StateDirectoryMode=0700 \
    ConfigurationDirectory=outpost ReadWritePaths=/var/lib/outpost DevicePolicy=closed 'DeviceAllow=/dev/tpmrm0 rw' \
    'RestrictNamespaces=mnt net ipc uts cgroup' ProtectKernelTunables=yes ProtectKernelModules=yes ProtectKernelLogs=yes \
    ProtectControlGroups=yes ProtectClock=yes LockPersonality=yes RestrictRealtime=yes RestrictSUIDSGID=yes \
    SystemCallArchitectures=native KillMode=mixed UMask=0077 Restart=on-failure OOMPolicy=continue; do
    grep -qx -- "$d" "$unit" || fail "the unit lacks '$d'"
  done
  local filter
  filter=$(unit_value "$unit" SystemCallFilter)
  for d in landlock_create_ruleset landlock_add_rule landlock_restrict_self; do
    [[ " $filter " == *" $d "* ]] || fail "SystemCallFilter does not allow $d (no systemd 252 group has it)"
  done
  [[ $(unit_value "$unit" TimeoutStopSec) == 180s ]] || fail "TimeoutStopSec is not 180s"
  # The sandbox's privileges, exactly: more would be lost hardening, fewer a daemon that
  # refuses to launch agents.
  local caps='CAP_SYS_ADMIN CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_KILL CAP_CHOWN'
  [[ $(unit_value "$unit" CapabilityBoundingSet) == "$caps" ]] || fail "CapabilityBoundingSet is not '$caps'"
  [[ $(unit_value "$unit" AmbientCapabilities) == "$caps" ]] || fail "AmbientCapabilities is not '$caps'"

  grep -Eq '^board: x86-64( |$)' "$root/etc/outpost/outpostd.yaml" || fail "the config's board is not x86-64"
  grep -Eq '^state_dir: /var/lib/outpost( |$)' "$root/etc/outpost/outpostd.yaml" || fail "the config's state_dir is not /var/lib/outpost"
}

# The installed outpostd accepts the installed config: config errors exit 2 (runtime/daemon/
# main.cc). The state directory is moved to an empty scratch one, so the daemon stops at the
# missing node identity (exit 1) and touches nothing on this machine.
check_config_parses() {
  local root=$1 prefix=$2 scratch=$work/config-check
  mkdir -p "$scratch/state"
  sed "s|^state_dir: .*|state_dir: $scratch/state|" "$root/etc/outpost/outpostd.yaml" >"$scratch/outpostd.yaml"
  local rc=0
  timeout 20 "$root$prefix/bin/outpostd" --config "$scratch/outpostd.yaml" >"$scratch/out.log" 2>&1 || rc=$?
  [[ $rc != 2 ]] || { cat "$scratch/out.log" >&2; fail "outpostd rejects the default configuration"; }
  [[ $rc != 124 ]] || fail "outpostd did not stop on an unprovisioned state directory"
  [[ $rc != 0 ]] || fail "outpostd started on an unprovisioned state directory"
  note "outpostd parses the default configuration (then: $(head -n 1 "$scratch/out.log"))"
}

# sysusers.d and tmpfiles.d, applied by systemd's own tools to a scratch root.
check_users_and_dirs() {
  local root=$1 prefix=$2 scratch=$work/sysroot
  mkdir -p "$scratch/etc" "$scratch/usr/lib/sysusers.d" "$scratch/usr/lib/tmpfiles.d"
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$scratch/etc/passwd"
  printf 'root:x:0:\ntss:x:900:\n' >"$scratch/etc/group"  # tpm-udev's group
  cp "$root$prefix/lib/sysusers.d/outpost.conf" "$scratch/usr/lib/sysusers.d/"
  cp "$root$prefix/lib/tmpfiles.d/outpost.conf" "$scratch/usr/lib/tmpfiles.d/"
  systemd-sysusers --root="$scratch" outpost.conf >"$work/sysusers.log" 2>&1 ||
    { cat "$work/sysusers.log" >&2; fail "systemd-sysusers rejects sysusers.d/outpost.conf"; }
  local uid
  uid=$(awk -F: '$1 == "outpost" { print $3 }' "$scratch/etc/passwd")
  [[ -n $uid ]] || fail "systemd-sysusers made no outpost user"
  awk -F: '$1 == "outpost" { exit !($7 ~ /nologin$/) }' "$scratch/etc/passwd" || fail "the outpost user has a login shell"
  grep -Eq '^tss:x:900:(.*,)?outpost(,|$)' "$scratch/etc/group" || fail "outpost is not a member of tss"
  if [[ $(id -u) == 0 ]]; then
    systemd-tmpfiles --root="$scratch" --create outpost.conf >"$work/tmpfiles.log" 2>&1 ||
      { cat "$work/tmpfiles.log" >&2; fail "systemd-tmpfiles rejects tmpfiles.d/outpost.conf"; }
    local d
    for d in var/lib/outpost var/lib/outpost/inbox var/lib/outpost/measurements; do
      [[ $(stat -c '%a %u' "$scratch/$d") == "700 $uid" ]] || fail "/$d is $(stat -c '%a %u' "$scratch/$d"), not 700 $uid"
    done
    [[ $(stat -c '%a %u' "$scratch/etc/outpost") == "755 0" ]] || fail "/etc/outpost is not 755 root"
  else
    note "not root: tmpfiles.d not applied"
  fi
}

# The hook's contract: it refuses a state directory holding files of another user, and
# otherwise runs exactly `outpost node measure --config CONFIG`. A stub stands in for outpost.
check_hook_contract() {
  local root=$1 prefix=$2 scratch=$work/hook
  mkdir -p "$scratch/state"
  printf '#!/bin/sh\necho "$@" > %s/args\n' "$scratch" >"$scratch/outpost"
  chmod +x "$scratch/outpost"
  sed "s|^outpost=.*|outpost=$scratch/outpost|" "$root$prefix/libexec/outpost/outpost-prestart" >"$scratch/hook"
  printf 'board: x86-64\n' >"$scratch/outpostd.yaml"
  STATE_DIRECTORY=$scratch/state sh "$scratch/hook" "$scratch/outpostd.yaml" || fail "the hook failed on a clean state directory"
  [[ $(cat "$scratch/args") == "node measure --config $scratch/outpostd.yaml" ]] ||
    fail "the hook ran 'outpost $(cat "$scratch/args")'"
  if [[ $(id -u) == 0 ]]; then
    touch "$scratch/state/node.json"
    chown 65534 "$scratch/state/node.json"
    local rc=0
    STATE_DIRECTORY=$scratch/state sh "$scratch/hook" "$scratch/outpostd.yaml" 2>"$scratch/err" || rc=$?
    [[ $rc != 0 ]] || fail "the hook accepted a state directory with a file of another user"
    grep -q "node.json is not owned by" "$scratch/err" || fail "the hook's refusal does not name the file: $(cat "$scratch/err")"
  fi
  rm -f "$scratch/args"
  if sh "$scratch/hook" "$scratch/missing" 2>/dev/null; then fail "the hook accepted a missing config"; fi
  [[ ! -e $scratch/args ]] || fail "the hook measured although the config is missing"
  note "the hook runs 'outpost node measure --config CONFIG' and refuses foreign files"
}

# systemd-analyze on the unit below root $1, offline: the unit's own warnings fail the test
# (unknown directives, bad values, missing executables under the root).
check_unit_with_systemd() {
  local root=$1 unit=outpostd.service
  # verify resolves the unit's dependencies (sysinit.target, ...) below --root too: give it
  # this machine's units, without overwriting ours.
  cp -an /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
  systemd-analyze verify --root="$root" --man=no --recursive-errors=no "$unit" >"$work/verify.log" 2>&1 ||
    { cat "$work/verify.log" >&2; fail "systemd-analyze verify reports problems in $unit"; }
  [[ ! -s $work/verify.log ]] || { cat "$work/verify.log" >&2; fail "systemd-analyze verify warns about $unit"; }
  note "systemd-analyze verify: clean"
  # Exposure 0..10 (×10 for --threshold). The unit scores 3.5: 1.6 for everything but the agent
  # sandbox, whose capabilities (SYS_ADMIN, SETUID, SETGID, SETPCAP, NET_ADMIN, KILL, CHOWN) and
  # namespaces systemd counts against the daemon that builds it. More means hardening was lost.
  systemd-analyze security --offline=yes --root="$root" --threshold=36 "$unit" >"$work/security.log" 2>&1 ||
    { cat "$work/security.log" >&2; fail "systemd-analyze security: exposure above 3.6"; }
  note "systemd-analyze security: $(grep -o 'Overall exposure level.*' "$work/security.log")"
}

case $mode in
  layout)
    root=$work/root prefix=/opt/outpost
    install_into "$root" "$prefix"
    check_layout "$root" "$prefix"
    echo '# edited by the operator' >>"$root/etc/outpost/outpostd.yaml"
    install_into "$root" "$prefix"
    [[ $(tail -n 1 "$root/etc/outpost/outpostd.yaml") == '# edited by the operator' ]] ||
      fail "installing again replaced an edited /etc/outpost/outpostd.yaml"
    check_config_parses "$root" "$prefix"
    check_users_and_dirs "$root" "$prefix"
    check_hook_contract "$root" "$prefix"
    ;;
  systemd)
    root=$work/root
    install_into "$root" /usr
    check_layout "$root" /usr
    check_unit_with_systemd "$root"
    ;;
  deb)
    # The shipped package is xz-compressed. A sanitizer build's binaries are large (70 MB
    # stripped), which xz takes ~40 s to compress here: its test package uses zstd (~1 s),
    # which Debian 12's dpkg reads too. The package's contents are the same either way.
    compression=xz
    if grep -qx 'OUTPOST_SANITIZE:BOOL=ON' "$build/CMakeCache.txt"; then compression=zstd; fi
    note "cpack -G DEB ($compression)"
    (cd "$work" && "$cpack" -G DEB --config "$build/CPackConfig.cmake" -B "$work/pkg" \
      -D CPACK_DEBIAN_COMPRESSION_TYPE=$compression) >"$work/cpack.log" 2>&1 ||
      { cat "$work/cpack.log" >&2; fail "cpack -G DEB failed"; }
    shopt -s nullglob
    debs=("$work"/pkg/outpost_*.deb)
    [[ ${#debs[@]} == 1 ]] || fail "expected one outpost_*.deb in $work/pkg, found ${#debs[@]}"
    deb=${debs[0]}
    note "$(basename "$deb"), $(du -h "$deb" | cut -f1)"
    [[ $(ar t "$deb" | tr '\n' ' ') == "debian-binary control.tar.gz data.tar.${compression/zstd/zst} " ]] ||
      fail "unexpected members: $(ar t "$deb" | tr '\n' ' ')"
    field() { dpkg-deb --field "$deb" "$1"; }
    [[ $(field Package) == outpost ]] || fail "Package is '$(field Package)'"
    version=${OUTPOST_VERSION:?OUTPOST_VERSION is not set}
    [[ $(field Version) == "$version" ]] || fail "Version is '$(field Version)', the project's is '$version'"
    [[ $(field Architecture) == "$(dpkg --print-architecture)" ]] || fail "Architecture is '$(field Architecture)'"
    [[ $(field Section) == admin && $(field Priority) == optional ]] || fail "Section/Priority are '$(field Section)/$(field Priority)'"
    [[ -n $(field Maintainer) ]] || fail "no Maintainer"
    [[ $(field Description) == "attested runtime for AI agents on edge nodes"* ]] || fail "Description: '$(field Description)'"
    depends=$(field Depends)
    note "Depends: $depends"
    # libmbedcrypto is mbedTLS's crypto half, which the binaries use today; libmbedtls (TLS)
    # joins when a binary needs it, and the linker drops it until then (--as-needed).
    for p in libtss2-esys libtss2-tctildr0 libmbedcrypto libyaml-cpp libc6 \
      systemd tpm-udev libtss2-tcti-device0; do
      [[ ", $depends" == *", $p"* ]] || fail "Depends lacks $p"
    done
    # outpostd speaks systemd's notify protocol itself (runtime/daemon/service_notify.h).
    [[ ", $depends" != *", libsystemd0"* ]] || fail "Depends names libsystemd0, which nothing should link"

    mkdir -p "$work/control"
    dpkg-deb --control "$deb" "$work/control"
    [[ $(cat "$work/control/conffiles") == /etc/outpost/outpostd.yaml ]] || fail "conffiles: '$(cat "$work/control/conffiles")'"
    for s in postinst prerm postrm; do
      [[ -x $work/control/$s ]] || fail "maintainer script $s is missing or not executable"
      sh -n "$work/control/$s" || fail "$s is not valid sh"
    done
    grep -q 'systemd-sysusers outpost.conf' "$work/control/postinst" || fail "postinst does not create the user"
    grep -q 'systemd-tmpfiles --create outpost.conf' "$work/control/postinst" || fail "postinst does not create the directories"
    # The note printed for the operator (a here-document) may name the commands; the script may not run them.
    ! sed '/<<.NOTE/,/^NOTE$/d' "$work/control/postinst" | grep -Eq 'systemctl( --[a-z]+)* (enable|start|restart) ' ||
      fail "postinst enables or starts the service (only try-restart on upgrade is allowed)"
    grep -q 'systemctl stop outpostd.service' "$work/control/prerm" || fail "prerm does not stop the service"

    dpkg-deb --contents "$deb" >"$work/contents.txt"
    for f in ./usr/bin/outpost ./usr/bin/outpostd ./usr/lib/systemd/system/outpostd.service \
      ./usr/libexec/outpost/outpost-prestart ./usr/lib/sysusers.d/outpost.conf ./usr/lib/tmpfiles.d/outpost.conf \
      ./etc/outpost/outpostd.yaml ./usr/share/doc/outpost/install.md ./usr/share/doc/outpost/linked/flatbuffers.copyright; do
      grep -q " $f\$" "$work/contents.txt" || fail "the package lacks $f"
    done
    awk '$2 != "root/root" { bad = 1; print } END { exit bad }' "$work/contents.txt" || fail "files not owned by root/root"

    root=$work/unpacked
    dpkg-deb -x "$deb" "$root"
    check_layout "$root" /usr
    check_unit_with_systemd "$root"
    ;;
  dpkg)
    skip() {
      echo "SKIP: $*"
      exit 77
    }
    [[ $(id -u) == 0 ]] || skip "installing a package needs root"
    shopt -s nullglob
    debs=("$work"/../deb/pkg/outpost_*.deb)
    [[ ${#debs[@]} == 1 ]] || fail "no package from install.deb in $work/../deb/pkg"
    unshare -m --propagation private true 2>/dev/null || skip "cannot make a mount namespace here"
    unshare -m --propagation private bash "$0" dpkg-inside "$build" "$work" "$(realpath "${debs[0]}")"
    ;;
  dpkg-inside)
    # In a private mount namespace: / overlaid by a scratch upper layer, then dpkg in a chroot.
    deb=${4:?package}
    mkdir -p "$work/upper" "$work/overlay-work" "$work/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/overlay-work" "$work/root" ||
      { echo "SKIP: no overlayfs here"; exit 77; }
    root=$work/root
    mount --bind /dev "$root/dev"
    mount -t proc proc "$root/proc"
    mkdir -p "$root/tmp/outpost-pkg"
    cp "$deb" "$root/tmp/outpost-pkg/outpost.deb"
    in_root() { chroot "$root" "$@"; }
    ! in_root dpkg -s outpost >/dev/null 2>&1 || fail "outpost is already installed on this machine"

    note "dpkg -i (first install)"
    in_root dpkg -i /tmp/outpost-pkg/outpost.deb >"$work/dpkg-install.log" 2>&1 ||
      { cat "$work/dpkg-install.log" >&2; fail "dpkg -i failed"; }
    grep -q 'outpostd is not enabled yet' "$work/dpkg-install.log" || fail "postinst printed no next steps"
    [[ $(in_root getent passwd outpost | cut -d: -f7) == */nologin ]] || fail "postinst made no outpost user with nologin"
    [[ " $(in_root id -nG outpost) " == *" tss "* ]] || fail "outpost is not in tss: $(in_root id -nG outpost)"
    [[ $(in_root stat -c '%a %U' /var/lib/outpost) == "700 outpost" ]] || fail "/var/lib/outpost is not 700 outpost"
    [[ ! -e $root/etc/systemd/system/multi-user.target.wants/outpostd.service ]] || fail "postinst enabled outpostd"
    in_root /usr/bin/outpostd --help >/dev/null || fail "the installed outpostd does not run"
    in_root setpriv --reuid=outpost --regid=outpost --init-groups /usr/bin/outpost --help >/dev/null ||
      fail "the installed outpost does not run as the outpost user"
    in_root systemctl enable outpostd.service >/dev/null 2>&1 || fail "systemctl enable outpostd failed"
    [[ -L $root/etc/systemd/system/multi-user.target.wants/outpostd.service ]] || fail "enable made no multi-user.target link"

    note "dpkg -i again (upgrade), with an edited conffile"
    echo '# edited by the operator' >>"$root/etc/outpost/outpostd.yaml"
    in_root dpkg -i --force-confold /tmp/outpost-pkg/outpost.deb >"$work/dpkg-upgrade.log" 2>&1 ||
      { cat "$work/dpkg-upgrade.log" >&2; fail "dpkg -i over the installed package failed"; }
    [[ $(tail -n 1 "$root/etc/outpost/outpostd.yaml") == '# edited by the operator' ]] || fail "the upgrade replaced the edited conffile"

    note "dpkg -r, dpkg -P"
    in_root dpkg -r outpost >"$work/dpkg-remove.log" 2>&1 || { cat "$work/dpkg-remove.log" >&2; fail "dpkg -r failed"; }
    [[ ! -e $root/usr/bin/outpostd ]] || fail "dpkg -r left /usr/bin/outpostd"
    [[ ! -e $root/etc/systemd/system/multi-user.target.wants/outpostd.service ]] || fail "prerm did not disable outpostd"
    [[ -f $root/etc/outpost/outpostd.yaml ]] || fail "dpkg -r removed the conffile (only purge should)"
    in_root dpkg -P outpost >"$work/dpkg-purge.log" 2>&1 || { cat "$work/dpkg-purge.log" >&2; fail "dpkg -P failed"; }
    [[ ! -e $root/etc/outpost/outpostd.yaml ]] || fail "dpkg -P left the conffile"
    [[ -d $root/var/lib/outpost ]] || fail "dpkg -P removed /var/lib/outpost (evidence must be kept)"
    ;;
  *)
    fail "unknown mode '$mode' (layout, systemd, deb or dpkg)"
    ;;
esac
[[ $mode == dpkg-inside ]] || echo "PASS: install.$mode"
