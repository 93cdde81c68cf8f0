/* Request/response latency, message sizes, byte counts and socket queueing time
 * on the watched ports, aggregated here in the kernel (metrics: tcp_messages.yaml).
 *
 * A socket alternates between messages in one direction and the other. For the
 * server role a request is what it receives and the response what it sends; for
 * the client role the other way round. Latency = first call of the request ->
 * first call of its response; a message's bytes are observed when the direction
 * turns (or the socket is destroyed). Bytes are counted per call, with or without state.
 *
 * With POD_LABELS (--kubernetes) every series also carries the cgroup v2 id of the process
 * that sends and receives on the socket, taken in that process's context (the send/recv
 * hooks), so user space can name its pod; without it that id is 0.
 */
#include <net/sock.h>
#include <net/tcp_states.h>

#include "histogram.h"
#include "socket_role.h"

#define PHASE_IDLE 0 /* else phase = direction + 1 of the message in flight */

#ifdef POD_LABELS
#define owner_cgroup() bpf_get_current_cgroup_id() /* only called in the process's own context */
#else
#define owner_cgroup() 0
#endif

struct sock_state {
    u64 request_start_ns; /* first call of the request in flight, 0 when none */
    u64 message_bytes;    /* bytes of the message in flight */
    u64 queued_since_ns;  /* oldest data_ready not yet read, 0 when none */
    u64 cgroup;           /* owner_cgroup() at the last send/recv; 0 before the first */
    u16 port;
    u8 role;
    u8 phase;
    u32 pad;
};

#ifndef MAX_SOCKETS
#define MAX_SOCKETS 65536 /* --ebpf-max-sockets */
#endif
/* Only sockets on the watched ports have an entry. It goes when the kernel destroys the
 * socket, not at TCP_CLOSE: after a FIN or RST the application can still read a reply
 * that arrived before it (and, at TCP_CLOSE, nothing would delete an entry made then). */
BPF_HASH(sockets, u64, struct sock_state, MAX_SOCKETS);

/* Whether sk can still carry a message worth following: not a listener, not closed. */
static __always_inline int carries_messages(struct sock *sk, int *read_failed)
{
    u8 state = 0;
    if (bpf_probe_read_kernel(&state, sizeof(state), (void *)&sk->__sk_common.skc_state)) {
        *read_failed = 1;
        return 0;
    }
    return state != TCP_CLOSE && state != TCP_LISTEN;
}

/* The state of sk if it is on a watched port, created on first sight of an open socket.
 * *port and *role are set either way (role ROLE_NONE: not on a watched port), so a socket
 * without state (closed, or the map full) still has its bytes counted. */
static __always_inline struct sock_state *watched_socket(struct sock *sk, u16 *port, u8 *role)
{
    u64 key = (u64)sk;
    struct sock_state *st = sockets.lookup(&key);
    if (st) {
        *port = st->port;
        *role = st->role;
        return st;
    }
    int read_failed = 0;
    *role = socket_role(sk, port, &read_failed);
    int open = *role != ROLE_NONE && carries_messages(sk, &read_failed);
    if (read_failed)
        count_error(ERR_READ_FAILED);
    if (!open)
        return 0;
    struct sock_state fresh = {.port = *port, .role = *role, .phase = PHASE_IDLE};
    int err = sockets.insert(&key, &fresh);
    if (err && err != -EEXIST) { /* EEXIST: another CPU made it first */
        count_error(ERR_MAP_FULL);
        return 0;
    }
    return sockets.lookup(&key);
}

static __always_inline void count_bytes(u16 port, u8 role, u8 dir, u32 bytes, u64 cgroup)
{
    struct metric_key k = {.metric = METRIC_tcp_bytes_total, .port = port, .role = role, .direction = dir,
                           .cgroup = cgroup};
    metric_add(&k, bytes);
}

static __always_inline void observe_message(struct sock_state *st)
{
    struct metric_key k = {.metric = METRIC_tcp_message_bytes, .port = st->port, .role = st->role,
                           .direction = st->phase - 1, .cgroup = st->cgroup};
    hist_observe(&k, st->message_bytes);
}

static __always_inline void on_tcp_call(struct sock_state *st, u32 bytes, u8 dir, u64 now)
{
    count_bytes(st->port, st->role, dir, bytes, st->cgroup);
    if (st->phase == dir + 1) {
        st->message_bytes += bytes;
        return;
    }
    if (st->phase != PHASE_IDLE)
        observe_message(st);
    u8 request_dir = st->role == ROLE_SERVER ? DIRECTION_RECV : DIRECTION_SEND;
    if (dir == request_dir) {
        st->request_start_ns = now;
    } else if (st->request_start_ns) {
        struct metric_key lk = {.metric = METRIC_tcp_latency_seconds, .port = st->port, .role = st->role,
                                .cgroup = st->cgroup};
        hist_observe(&lk, now - st->request_start_ns);
        st->request_start_ns = 0;
    }
    st->phase = dir + 1;
    st->message_bytes = bytes;
}

static __always_inline int on_tcp_send(void *ctx, struct sock *sk, u32 bytes)
{
    u16 port = 0;
    u8 role = ROLE_NONE;
    struct sock_state *st = watched_socket(sk, &port, &role);
    if (st) {
        st->cgroup = owner_cgroup();
        on_tcp_call(st, bytes, DIRECTION_SEND, st->phase == DIRECTION_SEND + 1 ? 0 : bpf_ktime_get_ns());
    } else if (role != ROLE_NONE) {
        count_bytes(port, role, DIRECTION_SEND, bytes, owner_cgroup());
    }
    return 0;
}

static __always_inline int on_tcp_recv(void *ctx, struct sock *sk, u32 bytes)
{
    u16 port = 0;
    u8 role = ROLE_NONE;
    struct sock_state *st = watched_socket(sk, &port, &role);
    if (!st) {
        if (role != ROLE_NONE)
            count_bytes(port, role, DIRECTION_RECV, bytes, owner_cgroup());
        return 0;
    }
    st->cgroup = owner_cgroup();
    u64 now = bpf_ktime_get_ns();
#ifdef HAVE_SK_DATA_READY
    if (st->queued_since_ns) {
        struct metric_key qk = {.metric = METRIC_tcp_socket_queue_seconds, .port = st->port,
                                .cgroup = st->cgroup};
        hist_observe(&qk, now - st->queued_since_ns);
        st->queued_since_ns = 0;
    }
#endif
    on_tcp_call(st, bytes, DIRECTION_RECV, now);
    return 0;
}

#include "tcp_hooks.h"

#ifdef HAVE_SK_DATA_READY
/* Linux >= 6.6: data (or a FIN) became readable on the socket. */
TRACEPOINT_PROBE(sock, sk_data_ready)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u16 port = 0;
    u8 role = ROLE_NONE;
    struct sock_state *st = watched_socket((struct sock *)args->skaddr, &port, &role);
    /* keep the oldest unread arrival: queueing is measured from it */
    if (st && !st->queued_since_ns)
        st->queued_since_ns = bpf_ktime_get_ns();
    return 0;
}
#endif

/* The pod labels of a segment-level event (softirq: no owner in context) come from the socket's
 * state, when it has one; 0 (outside any pod) otherwise. */
static __always_inline u64 socket_cgroup(const void *skaddr)
{
    u64 key = (u64)skaddr;
    struct sock_state *st = sockets.lookup(&key);
    return st ? st->cgroup : 0;
}

#ifdef HAVE_TCP_PROBE
/* Smoothed RTT, sampled at each incoming segment on an established socket. */
TRACEPOINT_PROBE(tcp, tcp_probe)
{
    /* sport/dport are host order in this tracepoint; srtt is in microseconds */
    u16 port = watched_port(args->sport, args->dport);
    if (!port)
        return 0;
    struct metric_key k = {.metric = METRIC_tcp_srtt_seconds, .port = port, .cgroup = socket_cgroup(args->skaddr)};
    hist_observe(&k, (u64)args->srtt * 1000);
    return 0;
}
#endif

#ifdef HAVE_TCP_RETRANSMIT
/* A retransmitted segment. */
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    /* sport/dport are host order in this tracepoint */
    u16 port = watched_port(args->sport, args->dport);
    if (!port)
        return 0;
    struct metric_key k = {.metric = METRIC_tcp_retransmits_total, .port = port,
                           .cgroup = socket_cgroup(args->skaddr)};
    metric_add(&k, 1);
    return 0;
}
#endif

/* The state of the socket at skaddr goes; its last message is observed first. */
static __always_inline void forget_socket(const void *skaddr)
{
    u64 key = (u64)skaddr;
    struct sock_state *st = sockets.lookup(&key);
    if (st) {
        if (st->phase != PHASE_IDLE)
            observe_message(st);
        sockets.delete(&key);
    }
}

/* The kernel is done with the socket (closed by its application, and by TCP): nothing can
 * be sent or read on it any more. */
TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
    forget_socket(args->skaddr);
    return 0;
}

/* A connection starts on this struct sock (connect, or a child of a listener): it is a new
 * socket as far as we are concerned, whatever an earlier one at this address left. */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol == IPPROTO_TCP && (args->newstate == TCP_SYN_SENT || args->newstate == TCP_SYN_RECV))
        forget_socket(args->skaddr);
    return 0;
}
