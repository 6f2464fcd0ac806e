#!/usr/bin/env bash
# Two clients on one network file system, for the reliability lab's lane 8 (test/faults/sshfs.test.ts).
#
# The kernel here has no NFS client but FUSE works, so one directory is served by a private sshd on
# 127.0.0.1 and mounted twice with sshfs: two sshfs processes are two clients with their own attribute and
# directory caches, which is what makes a network file system hard for a lock (DESIGN.md section 5).
#
# Usage:
#   scripts/sshfs-lab.sh up <workdir> [nocache|cache]
#       Installs sshfs/openssh-server/fuse3 if missing (apt-get; needs root), makes a throwaway client key
#       and host key under <workdir>/ssh, starts sshd on a free 127.0.0.1 port with its own config, creates
#       <workdir>/export and mounts it at <workdir>/mnt-a and <workdir>/mnt-b.
#       nocache: -o dir_cache=no,attr_timeout=0,entry_timeout=0 (every lookup and stat goes to the server)
#       cache:   sshfs defaults (20 s directory/attribute cache in sshfs, 1 s in the kernel)
#   scripts/sshfs-lab.sh down <workdir>
#       Unmounts both mounts (fusermount3 -u, else umount -l), stops the sshfs processes and sshd it started.
#       Safe to run more than once, and after a failed or partial `up`.
set -euo pipefail

readonly MOUNTS=(mnt-a mnt-b)
readonly SSHD=/usr/sbin/sshd
# How long to wait for sshd to listen and for a mount to appear; both take well under a second here.
readonly READY_TIMEOUT_S=20

say() { printf 'sshfs-lab: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

usage() {
  die "usage: $0 up <workdir> [nocache|cache] | down <workdir>"
}

is_mounted() {
  # /proc/mounts, not `mountpoint`: a FUSE mount whose server died fails stat (ENOTCONN) but is still mounted.
  grep -qs " $1 fuse" /proc/mounts
}

ensure_packages() {
  local missing=()
  command -v sshfs >/dev/null || missing+=(sshfs)
  [[ -x $SSHD ]] || missing+=(openssh-server)
  command -v fusermount3 >/dev/null || missing+=(fuse3)
  command -v ssh-keygen >/dev/null || missing+=(openssh-client)
  if ((${#missing[@]} == 0)); then
    say "sshfs, sshd and fusermount3 are installed"
    return
  fi
  [[ $(id -u) == 0 ]] || die "missing ${missing[*]} and not root, cannot apt-get install"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq sshfs openssh-server fuse3 >&2 || die "apt-get install sshfs openssh-server fuse3 failed"
  command -v sshfs >/dev/null && [[ -x $SSHD ]] || die "sshfs or sshd still missing after apt-get install"
}

# A port nothing listens on now. Racy by nature; up() retries sshd on another port if the bind fails.
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

write_sshd_config() {
  local work=$1 port=$2
  cat >"$work/ssh/sshd_config" <<EOF
# Private sshd for the sshfs lab: loopback only, key login only, files only under $work.
Port $port
ListenAddress 127.0.0.1
HostKey $work/ssh/host_ed25519
AuthorizedKeysFile $work/ssh/authorized_keys
PidFile $work/ssh/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel ERROR
Subsystem sftp internal-sftp
EOF
}

start_sshd() {
  local work=$1 port
  mkdir -p /run/sshd # sshd's privilege-separation directory; absent on a machine that never ran sshd
  for attempt in 1 2 3 4 5; do
    port=$(pick_port)
    write_sshd_config "$work" "$port"
    "$SSHD" -t -f "$work/ssh/sshd_config" || die "sshd rejected its config $work/ssh/sshd_config"
    # sshd binds before it daemonizes, so a taken port shows as a failed start here.
    if "$SSHD" -f "$work/ssh/sshd_config" -E "$work/ssh/sshd.log"; then
      for _ in $(seq 1 $((READY_TIMEOUT_S * 10))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
          echo "$port" >"$work/ssh/port"
          say "sshd listening on 127.0.0.1:$port (pid $(cat "$work/ssh/sshd.pid"))"
          return
        fi
        sleep 0.1
      done
      die "sshd started but does not listen on 127.0.0.1:$port; log: $(cat "$work/ssh/sshd.log")"
    fi
    say "sshd could not start on port $port (attempt $attempt); log: $(cat "$work/ssh/sshd.log" 2>/dev/null)"
  done
  die "sshd failed to start after 5 ports"
}

mount_one() {
  local work=$1 name=$2 port=$3
  shift 3
  local mnt="$work/$name"
  mkdir -p "$mnt" || die "cannot create the mount point $mnt"
  # -f keeps sshfs in the foreground so that its pid is the one recorded here (down stops exactly it);
  # setsid and the redirections detach it from the caller, whose pipes would otherwise stay open.
  setsid sshfs -f "root@127.0.0.1:$work/export" "$mnt" -p "$port" -F /dev/null \
    -o "IdentityFile=$work/ssh/client_ed25519,IdentitiesOnly=yes,BatchMode=yes" \
    -o "StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,LogLevel=ERROR" \
    "$@" </dev/null >"$work/ssh/sshfs-$name.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$work/ssh/sshfs-$name.pid"
  for _ in $(seq 1 $((READY_TIMEOUT_S * 10))); do
    if is_mounted "$mnt"; then
      say "mounted $mnt (sshfs pid $pid${*:+, $*})"
      return
    fi
    alive "$pid" || die "sshfs for $mnt exited: $(cat "$work/ssh/sshfs-$name.log")"
    sleep 0.1
  done
  die "sshfs for $mnt did not mount within ${READY_TIMEOUT_S} s: $(cat "$work/ssh/sshfs-$name.log")"
}

up() {
  local work=$1 mode=$2 options=()
  case $mode in
  nocache) options=(-o dir_cache=no,attr_timeout=0,entry_timeout=0) ;;
  cache) ;;
  *) die "unknown mode '$mode' (nocache or cache)" ;;
  esac
  [[ -e /dev/fuse ]] || die "/dev/fuse is missing: FUSE is not available here"
  ensure_packages
  mkdir -p "$work/ssh" "$work/export"
  work=$(cd "$work" && pwd -P)
  for name in "${MOUNTS[@]}"; do
    is_mounted "$work/$name" && die "$work/$name is already mounted; run: $0 down $work"
  done
  rm -f "$work/ssh/client_ed25519" "$work/ssh/client_ed25519.pub" "$work/ssh/host_ed25519" "$work/ssh/host_ed25519.pub"
  ssh-keygen -q -t ed25519 -N '' -C sshfs-lab-client -f "$work/ssh/client_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C sshfs-lab-host -f "$work/ssh/host_ed25519"
  cp "$work/ssh/client_ed25519.pub" "$work/ssh/authorized_keys"
  say "generated a throwaway client key and host key in $work/ssh"
  start_sshd "$work"
  local port
  port=$(cat "$work/ssh/port")
  for name in "${MOUNTS[@]}"; do
    mount_one "$work" "$name" "$port" "${options[@]}"
  done
  say "up: $work/export mounted at $work/mnt-a and $work/mnt-b (mode $mode)"
}

# A zombie counts as gone: sshd and the detached sshfs processes are reaped by init, which may take seconds.
alive() {
  kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# Waits up to ~5 s for a pid to exit, then SIGKILLs it. Only pids this script recorded are passed here.
stop_pid() {
  local pid=$1 what=$2
  alive "$pid" || return 0
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

down() {
  local work=$1 failed=0
  [[ -d $work ]] || {
    say "$work does not exist: nothing to take down"
    return 0
  }
  work=$(cd "$work" && pwd -P)
  for name in "${MOUNTS[@]}"; do
    local mnt="$work/$name"
    if is_mounted "$mnt"; then
      if fusermount3 -u "$mnt" 2>/dev/null; then
        say "unmounted $mnt"
      elif umount -l "$mnt"; then
        say "lazily unmounted $mnt (fusermount3 -u failed: busy)"
      else
        say "error: could not unmount $mnt"
        failed=1
      fi
    fi
    if [[ -f $work/ssh/sshfs-$name.pid ]]; then
      stop_pid "$(cat "$work/ssh/sshfs-$name.pid")" "sshfs for $name"
      rm -f "$work/ssh/sshfs-$name.pid"
    fi
  done
  if [[ -f $work/ssh/sshd.pid ]]; then
    stop_pid "$(cat "$work/ssh/sshd.pid")" sshd
    rm -f "$work/ssh/sshd.pid"
  fi
  ((failed == 0)) || die "some mounts under $work are still there"
  say "down: $work has no mounts and no sshd left"
}

(($# >= 2)) || usage
case $1 in
up) up "$2" "${3:-nocache}" ;;
down) down "$2" ;;
*) usage ;;
esac
