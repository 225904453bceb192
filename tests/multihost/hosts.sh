#!/usr/bin/env bash
# Fake hosts on one machine, for tests that run saegap across several hosts (as root).
#
#   hosts.sh probe                 exit 0 when hosts can be made here; else exit 77 and one line why
#   hosts.sh up DIR N              make hosts node1..nodeN; their state lives in DIR (made by the caller,
#                                  empty); on any failure everything made so far is removed (exit 1)
#   hosts.sh exec DIR K CMD...     run CMD inside host K (its network, UTS and mount namespaces)
#   hosts.sh pids DIR K            the pids of host K's processes, its sshd excepted
#   hosts.sh down DIR              remove everything `up` made (kill -9 by pid, then the namespaces),
#                                  also after a partial `up` or a killed test; then DIR itself
#   hosts.sh mpirun DIR            print the launcher's arguments (one a line) that reach the hosts
#
# Or `source` it and call mh_probe, mh_up, mh_exec, mh_pids, mh_down, mh_mpirun_args.
#
# A host is a network namespace (`ip netns`, named <tag>-hK, address 10.77.0.(10+K) on a private
# /24) plus UTS and mount namespaces held by the host's sshd: hostname nodeK, its own /etc/hosts
# (every host's name), its own /dev/shm and /run (tmpfs); `/` and /tmp are the machine's, as a
# cluster's shared scratch. The hosts' links (veth pairs) meet on a bridge in a namespace of its
# own (<tag>-br), so the machine's network (its root namespace) is never touched. mpirun runs
# inside host 1 (the first node of an allocation) and starts its daemons on the other hosts over
# ssh (`--mca plm_rsh_agent "ssh -F DIR/ssh_config"`: keys, known_hosts and config under DIR; root's
# ~/.ssh is not used). Open MPI's session directories go to DIR/tmp (orte_tmpdir_base), so a
# killed job leaves nothing in /tmp. See ../shared/reference/PLATFORM-NOTES.md, "Several hosts
# on one machine", for what each piece is for.
#
# Every thing made is written to DIR/made as it is made (netns NAME, pid PID); `down` undoes that
# list, newest first, and checks that nothing of it is left.

MH_SUBNET=10.77.0
MH_SSHD=${MH_SSHD:-/usr/sbin/sshd}

mh_die() { echo "hosts.sh: $*" >&2; return 1; }

# exit 0, or print why fake hosts cannot be made here and return 77
mh_probe() {
  local t
  [ "$(id -u)" = 0 ] || { echo "fake hosts need root (network, UTS and mount namespaces; you are uid $(id -u))"; return 77; }
  for t in ip unshare nsenter ssh ssh-keygen "$MH_SSHD"; do
    command -v "$t" > /dev/null 2>&1 || { echo "fake hosts need $t (env/setup-debian.sh installs openssh-server, iproute2, util-linux)"; return 77; }
  done
  if ! unshare --net --uts --mount --propagation private true 2> /dev/null; then
    echo "fake hosts need network, UTS and mount namespaces, which this machine refuses (unshare --net --uts --mount failed: a container without CAP_SYS_ADMIN?)"
    return 77
  fi
  t=sgmh-probe-$$
  if ! ip netns add "$t" 2> /dev/null; then
    echo "fake hosts need named network namespaces (ip netns add failed)"
    return 77
  fi
  if ! ip -n "$t" link add mhp0 type veth peer name mhp1 2> /dev/null ||
     ! ip -n "$t" link add mhbr type bridge 2> /dev/null; then
    ip netns del "$t" 2> /dev/null
    echo "fake hosts need veth pairs and a bridge inside a network namespace (ip link add failed)"
    return 77
  fi
  ip netns del "$t" || return 1
  return 0
}

mh_made() { echo "$*" >> "$MH_DIR/made"; }

mh_tag() { cat "$1/tag"; }

mh_holder() { cat "$1/holder-$2.pid"; }

# the pids of every process in host K's network namespace, its sshd (the namespaces' holder) excepted
mh_pids() {
  local dir=$1 k=$2 holder ns p
  holder=$(mh_holder "$dir" "$k") || return 1
  ns=$(readlink "/proc/$holder/ns/net") || return 1
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$holder" ] && continue
    [ "$(readlink "/proc/$p/ns/net" 2> /dev/null)" = "$ns" ] && echo "$p"
  done
  return 0
}

mh_exec() {
  local dir=$1 k=$2 holder
  shift 2
  holder=$(mh_holder "$dir" "$k") || return 1
  nsenter -t "$holder" -n -u -m -- "$@"
}

mh_mpirun_args() {
  local dir=$1
  printf '%s\n' --mca plm_rsh_agent "ssh -F $dir/ssh_config" \
    --mca btl_tcp_if_include "$MH_SUBNET.0/24" --mca oob_tcp_if_include "$MH_SUBNET.0/24" \
    --mca orte_tmpdir_base "$dir/tmp" --bind-to none
}

mh_up() {
  local dir=$1 n=$2 tag k ip i
  [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ] || { mh_die "up: $dir must be an empty directory"; return 1; }
  [[ "$n" =~ ^[1-9]$ ]] || { mh_die "up: 1..9 hosts, not '$n'"; return 1; }
  MH_DIR=$dir
  tag=sgmh$$
  echo "$tag" > "$dir/tag"
  : > "$dir/made"
  mkdir -m 700 "$dir/tmp"
  # keys: one client key for root on every host, one host key for every sshd
  ssh-keygen -q -t ed25519 -N '' -C saegap-multihost -f "$dir/id_ed25519" || return 1
  ssh-keygen -q -t ed25519 -N '' -C saegap-multihost-host -f "$dir/host_key" || return 1
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  { echo "127.0.0.1 localhost"; for k in $(seq 1 "$n"); do echo "$MH_SUBNET.$((10 + k)) node$k"; done; } > "$dir/hosts"
  : > "$dir/known_hosts"
  for k in $(seq 1 "$n"); do
    echo "node$k,$MH_SUBNET.$((10 + k)) $(cut -d' ' -f1-2 "$dir/host_key.pub")" >> "$dir/known_hosts"
  done
  cat > "$dir/ssh_config" <<CFG
Host *
  User root
  IdentityFile $dir/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 10
CFG
  # StrictModes no: the keys live under a temp dir whose parents sshd would otherwise judge
  cat > "$dir/sshd_config" <<CFG
Port 22
ListenAddress 0.0.0.0
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PidFile none
MaxStartups 100
MaxSessions 100
AcceptEnv none
CFG

  ip netns add "$tag-br" || return 1
  mh_made netns "$tag-br"
  ip -n "$tag-br" link set lo up && ip -n "$tag-br" link add br0 type bridge && ip -n "$tag-br" link set br0 up || return 1
  for k in $(seq 1 "$n"); do
    ip="$MH_SUBNET.$((10 + k))"
    ip netns add "$tag-h$k" || return 1
    mh_made netns "$tag-h$k"
    ip -n "$tag-h$k" link add eth0 type veth peer name v$k netns "$tag-br" &&
      ip -n "$tag-br" link set "v$k" master br0 up &&
      ip -n "$tag-h$k" addr add "$ip/24" dev eth0 &&
      ip -n "$tag-h$k" link set eth0 up && ip -n "$tag-h$k" link set lo up || return 1
    # the host's sshd holds its UTS and mount namespaces; each exec keeps the pid ($! is sshd's)
    ip netns exec "$tag-h$k" unshare --uts --mount --propagation private -- /bin/sh -c '
      hostname "$1" &&
      mount --bind "$2/hosts" /etc/hosts &&
      mount -t tmpfs -o mode=1777,size=512m mh-shm /dev/shm &&
      mount -t tmpfs -o mode=755,size=16m mh-run /run && mkdir -m 755 /run/sshd &&
      "$3" -t -f "$2/sshd_config" && exec "$3" -D -e -f "$2/sshd_config"' sh "node$k" "$dir" "$MH_SSHD" \
      > "$dir/sshd-$k.log" 2>&1 < /dev/null &
    echo $! > "$dir/holder-$k.pid"
    mh_made pid $!
  done
  # every sshd answers (from host 1, as mpirun will reach them), and is the holder it should be
  for k in $(seq 1 "$n"); do
    for i in $(seq 1 100); do
      mh_exec "$dir" 1 ssh -F "$dir/ssh_config" "node$k" true 2> "$dir/ssh-probe-$k.log" && break
      kill -0 "$(mh_holder "$dir" "$k")" 2> /dev/null || { mh_die "up: node$k's sshd ended: $(cat "$dir/sshd-$k.log")"; return 1; }
      sleep 0.05
    done
    [ "$i" -lt 100 ] || { mh_die "up: node$k's sshd does not answer: $(cat "$dir/ssh-probe-$k.log")"; return 1; }
    [ "$(mh_exec "$dir" "$k" hostname)" = "node$k" ] || { mh_die "up: node$k has hostname $(mh_exec "$dir" "$k" hostname)"; return 1; }
    [ "$(readlink "/proc/$(mh_holder "$dir" "$k")/exe")" = "$(readlink -f "$MH_SSHD")" ] ||
      { mh_die "up: node$k's holder $(mh_holder "$dir" "$k") is not sshd"; return 1; }
  done
  return 0
}

# kill -9 every pid in `pids` and wait until each is gone (not a zombie: reaped or not our child)
mh_kill_wait() {
  local p t
  for p in "$@"; do kill -KILL "$p" 2> /dev/null; done
  for t in $(seq 1 400); do
    local left=0
    for p in "$@"; do
      if [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2> /dev/null)" != Z ]; then left=1; fi
    done
    [ $left = 0 ] && return 0
    sleep 0.05
  done
  mh_die "processes survive kill -9: $*"
}

mh_down() {
  local dir=$1 what name ns pids p k bad=0
  # not a DIR of `up` (no ledger): remove it only when empty, never anything else
  [ -f "$dir/made" ] || { rmdir "$dir" 2> /dev/null; return 0; }
  # first every process inside a host (its ranks, orted, ssh sessions), then the sshd holders
  for k in $(ls "$dir" | sed -n 's/^holder-\([0-9]*\)\.pid$/\1/p'); do
    p=$(mh_holder "$dir" "$k")
    [ -e "/proc/$p" ] || continue
    pids=$(mh_pids "$dir" "$k")
    [ -z "$pids" ] || mh_kill_wait $pids || bad=1
  done
  tac "$dir/made" | while read -r what name; do
    case $what in
      pid) mh_kill_wait "$name" || exit 1 ;;
    esac
  done || bad=1
  wait 2> /dev/null   # reap the holders when this shell started them (sourced use)
  tac "$dir/made" | while read -r what name; do
    case $what in
      netns)
        # a process still inside (one that no holder knew of) would keep the namespace alive
        ns=$(ip netns pids "$name" 2> /dev/null)
        [ -z "$ns" ] || mh_kill_wait $ns
        ip netns del "$name" 2> /dev/null
        if ip netns list | grep -qw "^$name"; then echo "hosts.sh: down: netns $name is still there" >&2; exit 1; fi ;;
    esac
  done || bad=1
  [ $bad = 0 ] || return 1
  rm -rf "$dir"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -u
  cmd=${1:-}
  shift || true
  case $cmd in
    probe) mh_probe ;;
    up)
      [ $# = 2 ] || { echo "usage: hosts.sh up DIR N" >&2; exit 2; }
      # on any failure (or a signal) undo what was made, DIR included
      MH_UP_DIR=$1   # not "$1" in the trap: inside a function that is the function's argument
      trap 'mh_down "$MH_UP_DIR" > /dev/null 2>&1; exit 130' INT TERM
      if ! mh_up "$1" "$2"; then mh_down "$1"; exit 1; fi ;;
    exec) mh_exec "$@" ;;
    pids) mh_pids "$@" ;;
    down) mh_down "$@" ;;
    mpirun) mh_mpirun_args "$@" ;;
    *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
fi
