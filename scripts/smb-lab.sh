#!/usr/bin/env bash
# Two clients on one SMB share, the SMB twin of scripts/sshfs-lab.sh (same interface, same mount layout).
#
# The kernel here has no CIFS client but FUSE works, so one directory is exported by a private smbd on
# 127.0.0.1 and mounted twice with smbnetfs (libsmbclient over FUSE): two smbnetfs processes are two SMB
# clients with their own sessions, open handles and FUSE caches, which is what makes a network file system
# hard for a lock (DESIGN.md section 5).
#
# Usage:
#   scripts/smb-lab.sh up <workdir> [nocache|cache]
#       Installs samba/smbnetfs/fuse3 if missing (apt-get; needs root). Starts smbd on a free 127.0.0.1 port
#       with its own config and all of its state under <workdir>/smb (tdbsam passdb with a throwaway password
#       for the SMB account "root", which the share maps to the Unix root user), exporting <workdir>/export
#       as the share "lab". Mounts smbnetfs twice, at <workdir>/fuse-a and <workdir>/fuse-b, each with its
#       own HOME (<workdir>/smbnetfs-a, -b) holding its smbnetfs.conf and libsmbclient smb.conf. The share
#       is at <fuse-x>/127.0.0.1:<port>/lab inside those mounts, so <workdir>/mnt-a and <workdir>/mnt-b are
#       bind mounts of exactly that directory: callers use mnt-a and mnt-b as the share.
#       nocache: -o attr_timeout=0,entry_timeout=0,negative_timeout=0 (every lookup and stat goes to smbd)
#       cache:   libfuse 2 defaults (1 s entry and attribute cache in the kernel)
#       Refuses (exit 1, lab untouched) when <workdir> is already up; a failed `up` leaves its pieces for
#       `down`.
#   scripts/smb-lab.sh down <workdir>
#       Unmounts mnt-a, mnt-b, fuse-a and fuse-b (fusermount3 -u, else umount -l), stops the smbnetfs
#       processes, smbd and the samba-dcerpcd smbd may have started, by the pids recorded under <workdir>.
#       Safe to run more than once, and after a failed or partial `up`.
set -euo pipefail

readonly CLIENTS=(a b)
readonly SHARE=lab
readonly SMBD=/usr/sbin/smbd
# How long to wait for smbd to listen and for a share to answer through a mount; both take ~1 s here.
readonly READY_TIMEOUT_S=20

say() { printf 'smb-lab: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

usage() {
  die "usage: $0 up <workdir> [nocache|cache] | down <workdir>"
}

is_mounted() {
  # /proc/mounts, not `mountpoint`: a FUSE mount whose server died fails stat (ENOTCONN) but is still mounted.
  # Bind mounts of a FUSE directory show the same fuse.smbnetfs type, so this covers mnt-a/mnt-b as well.
  grep -qs " $1 fuse" /proc/mounts
}

ensure_packages() {
  local missing=()
  [[ -x $SMBD ]] || missing+=(samba)
  command -v smbpasswd >/dev/null || missing+=(samba-common-bin)
  command -v smbnetfs >/dev/null || missing+=(smbnetfs)
  command -v fusermount3 >/dev/null || missing+=(fuse3)
  if ((${#missing[@]} == 0)); then
    say "smbd, smbnetfs and fusermount3 are installed"
    return
  fi
  [[ $(id -u) == 0 ]] || die "missing ${missing[*]} and not root, cannot apt-get install"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends samba samba-common-bin smbnetfs fuse3 >&2 ||
    die "apt-get install samba samba-common-bin smbnetfs fuse3 failed"
  if [[ ! -x $SMBD ]] || ! command -v smbnetfs >/dev/null || ! command -v smbpasswd >/dev/null; then
    die "smbd, smbpasswd or smbnetfs still missing after apt-get install"
  fi
}

# A port nothing listens on now. Racy by nature; start_smbd retries on another port if the bind fails.
# Never 445/139: the range starts at 20000.
pick_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "found no free port on 127.0.0.1"
}

# A zombie counts as gone: smbd, smbnetfs and their children are reaped by init, which may take seconds.
alive() {
  kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# True when pid is alive and its command line mentions marker (a path under the workdir): a recorded pid
# that the kernel has since given to an unrelated process is never signalled.
ours() {
  local pid=$1 marker=$2 cmdline
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$marker"* ]]
}

write_smb_conf() {
  local work=$1 port=$2 smb="$1/smb"
  cat >"$smb/smb.conf" <<EOF
# Private smbd for the SMB lab: loopback only, one share, every file it writes under $smb.
[global]
  server role = standalone server
  workgroup = SMBLAB
  netbios name = SMBLAB
  server string = payload-cache smb lab
  # smbd only: libsmbclient ignores "smb ports", so clients put the port in the path (127.0.0.1:<port>).
  smb ports = $port
  interfaces = 127.0.0.1
  bind interfaces only = yes
  disable netbios = yes
  private dir = $smb/private
  lock directory = $smb/lock
  state directory = $smb/state
  cache directory = $smb/cache
  pid directory = $smb/pid
  ncalrpc dir = $smb/ncalrpc
  # The name smbd -l gives it anyway; -l wins over this line and also covers what is logged before the
  # config is read.
  log file = $smb/log/log.smbd
  max log size = 10000
  log level = 1
  passdb backend = tdbsam:$smb/private/passdb.tdb
  map to guest = never
  # No samba-dcerpcd: share enumeration (listing <mount>/127.0.0.1:<port>) then fails, file access does not.
  # On demand it would log to /var/log/samba before reading this file; down still stops one if it appears.
  rpc start on demand helpers = no
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  usershare max shares = 0
  # Unix-like names: exact case, no mangling, no directory scans for case-insensitive matches.
  case sensitive = yes
  preserve case = yes
  short preserve case = yes
  mangled names = no
  # Plain Unix modes on the exported files (no DOS attributes in xattrs, no archive bit mapped to u+x).
  store dos attributes = no
  map archive = no
  map hidden = no
  map system = no
  map readonly = no
  create mask = 0644
  directory mask = 0755

[$SHARE]
  path = $work/export
  read only = no
  # A private lab run as root: every session writes as root, whatever the export's owner.
  force user = root
  force group = root
EOF
}

# True when process pid holds the socket listening on 127.0.0.1:port (/proc/net/tcp: little-endian
# address, hex port, state 0A = LISTEN, inode in column 10).
listens_on() {
  local pid=$1 port=$2 inode fd
  inode=$(awk -v local="0100007F:$(printf '%04X' "$port")" '$2 == local && $4 == "0A" { print $10; exit }' /proc/net/tcp)
  [[ -n $inode ]] || return 1
  for fd in "/proc/$pid/fd/"*; do
    [[ $(readlink "$fd" 2>/dev/null) == "socket:[$inode]" ]] && return 0
  done
  return 1
}

# The lines of smbd's log that say why it failed (a failed bind ends in a PANIC and a long backtrace).
smbd_log_errors() {
  grep -E 'failed|error|denied|PANIC' "$1/smb/log/log.smbd" 2>/dev/null | tail -n 5 || true
}

start_smbd() {
  local work=$1 smb="$1/smb" port pid
  for attempt in 1 2 3 4 5; do
    port=$(pick_port)
    write_smb_conf "$work" "$port"
    testparm -s "$smb/smb.conf" >/dev/null 2>"$smb/log/testparm.log" ||
      die "smbd rejected its config $smb/smb.conf: $(cat "$smb/log/testparm.log")"
    # --foreground --no-process-group keeps smbd's pid the one recorded here (down stops exactly it; its own
    # pid file vanishes when it exits); setsid and the redirections detach it from the caller, whose pipes
    # would otherwise stay open. -l keeps even the log lines written before the config is read under $smb/log.
    setsid "$SMBD" --foreground --no-process-group -s "$smb/smb.conf" -l "$smb/log" \
      </dev/null >"$smb/log/smbd.out" 2>&1 &
    pid=$!
    echo "$pid" >"$smb/smbd.lab-pid"
    for _ in $(seq 1 $((READY_TIMEOUT_S * 10))); do
      # smbd panics and exits when it cannot bind its port; until then the port may answer for whoever
      # took it since pick_port, so readiness is smbd itself holding the listening socket.
      alive "$pid" || break
      if listens_on "$pid" "$port"; then
        echo "$port" >"$smb/port"
        say "smbd listening on 127.0.0.1:$port (pid $pid)"
        return
      fi
      sleep 0.1
    done
    if alive "$pid"; then
      die "smbd (pid $pid) started but does not listen on 127.0.0.1:$port; log: $(smbd_log_errors "$work")"
    fi
    say "smbd could not start on port $port (attempt $attempt); log: $(smbd_log_errors "$work")"
  done
  die "smbd failed to start after 5 ports"
}

# The SMB account: "root" in the private passdb only, with a fresh random password each `up`.
add_smb_user() {
  local work=$1 password=$2
  printf '%s\n%s\n' "$password" "$password" |
    smbpasswd -c "$work/smb/smb.conf" -s -a root >"$work/smb/log/smbpasswd.log" 2>&1 ||
    die "smbpasswd -a root failed: $(cat "$work/smb/log/smbpasswd.log")"
}

# Each client gets its own HOME: smbnetfs reads ~/.smb/smbnetfs.conf (also passed as config=) and
# libsmbclient reads ~/.smb/smb.conf, whose directories keep libsmbclient's tdb files under the workdir.
write_client_config() {
  local home=$1 password=$2
  mkdir -p "$home/.smb"
  cat >"$home/.smb/smb.conf" <<EOF
# libsmbclient settings for one smbnetfs client of the SMB lab.
[global]
  client min protocol = SMB2_02
  disable netbios = yes
  name resolve order = host
  private dir = $home/.smb/private
  lock directory = $home/.smb/lock
  state directory = $home/.smb/state
  cache directory = $home/.smb/cache
  pid directory = $home/.smb/pid
  log file = $home/libsmbclient.log
EOF
  (
    umask 077 # it holds the password
    cat >"$home/.smb/smbnetfs.conf" <<EOF
# smbnetfs settings for one client of the SMB lab.
auth "root" "$password"
# neg_cache "false" hangs smbnetfs; the default 3 s negative cache turns one failed open (O_APPEND gives EIO)
# into 3 s of EIO for the whole mount, so keep failures cached for 100 ms only.
neg_cache_timeout 100
# No browsing of the (nonexistent) network neighbourhood and no desktop keyring lookups.
smb_query_browsers "false"
use_libsecret "false"
EOF
  )
}

mount_one() {
  local work=$1 client=$2 port=$3
  shift 3
  local home="$work/smbnetfs-$client" fuse="$work/fuse-$client" mnt="$work/mnt-$client"
  local share="$work/fuse-$client/127.0.0.1:$port/$SHARE"
  mkdir -p "$fuse" "$mnt" || die "cannot create the mount points $fuse and $mnt"
  # -f keeps smbnetfs in the foreground so that its pid is the one recorded here (down stops exactly it);
  # setsid and the redirections detach it from the caller, whose pipes would otherwise stay open.
  HOME=$home setsid smbnetfs "$fuse" -f -o "config=$home/.smb/smbnetfs.conf" "$@" \
    </dev/null >"$home/smbnetfs.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$home/smbnetfs.pid"
  local deadline=$((SECONDS + READY_TIMEOUT_S))
  until is_mounted "$fuse"; do
    alive "$pid" || die "smbnetfs for $fuse exited: $(cat "$home/smbnetfs.log")"
    ((SECONDS < deadline)) || die "smbnetfs for $fuse did not mount within ${READY_TIMEOUT_S} s: $(cat "$home/smbnetfs.log")"
    sleep 0.1
  done
  # smbnetfs shows a host directory even when the server is down, so only a listing of the share itself
  # proves that the session and the tree connect work.
  until ls "$share" >/dev/null 2>&1; do
    alive "$pid" || die "smbnetfs for $fuse exited: $(cat "$home/smbnetfs.log")"
    ((SECONDS < deadline)) || die "$share did not answer within ${READY_TIMEOUT_S} s: $(ls "$share" 2>&1); smbd log: $(smbd_log_errors "$work")"
    sleep 0.2
  done
  # A bind mount (not a symlink): <workdir>/mnt-x is the share for every path operation, realpath included,
  # and the colon in the smbnetfs path never reaches the callers.
  mount --bind "$share" "$mnt" || die "mount --bind $share $mnt failed"
  say "mounted $mnt -> $share (smbnetfs pid $pid${*:+, $*})"
}

up() {
  local work=$1 mode=$2 options=()
  case $mode in
  nocache) options=(-o "attr_timeout=0,entry_timeout=0,negative_timeout=0") ;;
  cache) ;;
  *) die "unknown mode '$mode' (nocache or cache)" ;;
  esac
  [[ -e /dev/fuse ]] || die "/dev/fuse is missing: FUSE is not available here"
  ensure_packages
  mkdir -p "$work"
  work=$(cd "$work" && pwd -P)
  # Not idempotent on purpose: a second `up` refuses before touching anything, so the running lab stays as is.
  for client in "${CLIENTS[@]}"; do
    for dir in "fuse-$client" "mnt-$client"; do
      is_mounted "$work/$dir" && die "$work/$dir is already mounted; run: $0 down $work"
    done
  done
  if [[ -f $work/smb/smbd.lab-pid ]] && ours "$(cat "$work/smb/smbd.lab-pid")" "$work/smb/smb.conf"; then
    die "smbd for $work is already running; run: $0 down $work"
  fi
  mkdir -p "$work/export" "$work/smb"/{private,lock,state,cache,pid,ncalrpc,log}
  chmod 700 "$work/smb/private"
  local password
  password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  start_smbd "$work"
  add_smb_user "$work" "$password"
  say "added the SMB account root with a throwaway password to $work/smb/private/passdb.tdb"
  local port
  port=$(cat "$work/smb/port")
  for client in "${CLIENTS[@]}"; do
    write_client_config "$work/smbnetfs-$client" "$password"
  done
  for client in "${CLIENTS[@]}"; do
    mount_one "$work" "$client" "$port" "${options[@]}"
  done
  say "up: $work/export shared as //127.0.0.1:$port/$SHARE, mounted at $work/mnt-a and $work/mnt-b (mode $mode)"
}

# Waits up to ~5 s for a pid to exit, then SIGKILLs it. Only pids this script recorded are passed here,
# and only while their command line still names this workdir.
stop_pid() {
  local pid=$1 what=$2 marker=$3
  ours "$pid" "$marker" || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive "$pid" || {
      say "stopped $what (pid $pid)"
      return 0
    }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  say "killed $what (pid $pid) after it ignored SIGTERM"
}

# Unmounts one mount point, repeatedly in case mounts were stacked on it. Returns 1 if one stays.
unmount_all() {
  local mnt=$1
  for _ in 1 2 3 4 5; do
    is_mounted "$mnt" || return 0
    if fusermount3 -u "$mnt" 2>/dev/null; then
      say "unmounted $mnt"
    elif umount -l "$mnt"; then
      say "lazily unmounted $mnt (fusermount3 -u failed: busy)"
    else
      say "error: could not unmount $mnt"
      return 1
    fi
  done
  ! is_mounted "$mnt"
}

down() {
  local work=$1 failed=0
  [[ -d $work ]] || {
    say "$work does not exist: nothing to take down"
    return 0
  }
  work=$(cd "$work" && pwd -P)
  # The bind mounts first: they keep the FUSE mounts busy.
  for client in "${CLIENTS[@]}"; do
    unmount_all "$work/mnt-$client" || failed=1
  done
  for client in "${CLIENTS[@]}"; do
    unmount_all "$work/fuse-$client" || failed=1
    local pidfile="$work/smbnetfs-$client/smbnetfs.pid"
    if [[ -f $pidfile ]]; then
      stop_pid "$(cat "$pidfile")" "smbnetfs for fuse-$client" "$work/fuse-$client"
      rm -f "$pidfile"
    fi
  done
  # smbd after its clients, so that no smbnetfs waits on a dead server.
  if [[ -f $work/smb/smbd.lab-pid ]]; then
    stop_pid "$(cat "$work/smb/smbd.lab-pid")" smbd "$work/smb/smb.conf"
    rm -f "$work/smb/smbd.lab-pid"
  fi
  # samba-dcerpcd is not a child smbd waits for: if it was started on demand it outlives smbd, and it
  # records itself only in the private pid directory (its rpcd_* workers exit with it).
  if [[ -f $work/smb/pid/samba-dcerpcd.pid ]]; then
    stop_pid "$(cat "$work/smb/pid/samba-dcerpcd.pid")" samba-dcerpcd "$work/smb/smb.conf"
    rm -f "$work/smb/pid/samba-dcerpcd.pid"
  fi
  ((failed == 0)) || die "some mounts under $work are still there"
  say "down: $work has no mounts, no smbnetfs and no smbd left"
}

(($# >= 2)) || usage
case $1 in
up) up "$2" "${3:-nocache}" ;;
down) down "$2" ;;
*) usage ;;
esac
