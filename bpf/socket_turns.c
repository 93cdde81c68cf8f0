/* One record per server-side socket turn on the watched ports, to a ring buffer that user
 * space joins with Triton's traces (exporter/wire/). A turn is one request and its
 * response on a connection: the request's first byte arrives (sock:sk_data_ready), the
 * application reads it, writes the response, and the peer acknowledges its last byte
 * (tcp:tcp_probe, the ACK's sequence number against the socket's write sequence).
 * Every stamp is bpf_ktime_get_ns(): CLOCK_MONOTONIC, the clock of Triton's traces.
 *
 * A turn is sent when the peer has acknowledged everything written (it may be sent again,
 * same turn number, if more is written before the next request), and when it ends
 * unacknowledged (the next request arrives, or the socket goes). User space keeps the
 * last record of each (sock, born_ns, turn).
 */
#include <net/sock.h>
#include <net/tcp_states.h>
#include <linux/tcp.h>

#include "histogram.h"
#include "ports.h"

/* Offsets the loader takes from the kernel's BTF; the headers' own where it has none. */
#ifndef TCP_WRITE_SEQ_OFFSET
#define TCP_WRITE_SEQ_OFFSET offsetof(struct tcp_sock, write_seq)
#endif
#ifndef SKB_DATA_OFFSET
#define SKB_DATA_OFFSET offsetof(struct sk_buff, data)
#endif
#ifndef TURN_SOCKETS
#define TURN_SOCKETS 16384 /* connections followed at once */
#endif
#ifndef TURN_RATE
#define TURN_RATE 20000 /* records per second per CPU; more are dropped and counted */
#endif
#ifndef TURN_RING_PAGES
#define TURN_RING_PAGES 256 /* 1 MiB of records in flight to user space */
#endif

#define TURN_IDLE 0
#define TURN_REQUEST 1
#define TURN_RESPONSE 2

/* Slots of `dropped`. */
#define DROP_RING_FULL 0
#define DROP_RATE 1
#define DROP_SOCKETS_FULL 2

struct socket_turn {
    u64 sock;           /* struct sock address: the connection while it lives */
    u64 born_ns;        /* when this program first saw the socket: (sock, born_ns) is unique */
    u64 first_in_ns;    /* the request's first byte in the socket; 0: not seen */
    u64 first_read_ns;  /* the application's first read of it; 0: none */
    u64 last_read_ns;
    u64 first_write_ns; /* the response's first write; 0: none */
    u64 last_write_ns;
    u64 acked_ns;       /* the peer acknowledged the last byte written; 0: not (yet) */
    u64 cgroup;         /* cgroup v2 id of the reading/writing process */
    u32 turn;           /* 1, 2, ... on this socket */
    u32 bytes_in;
    u32 bytes_out;
    u16 family;
    u16 lport;
    u16 rport;
    u8 final;           /* 1: the turn is over (no later record of it follows) */
    u8 pad[3];
    u8 laddr[16];
    u8 raddr[16];
    u32 reader;         /* thread id of the turn's first read: one thread serves its reads in order */
};

struct turn_state {
    struct socket_turn rec;
    u32 end_seq; /* write_seq after the last write: the ACK that reaches it acknowledges all */
    u8 phase;
    u8 dirty;    /* changed since last sent */
    u16 pad;
};

struct rate_slot {
    u64 second;
    u64 sent;
};

BPF_RINGBUF_OUTPUT(turns, TURN_RING_PAGES);
BPF_ARRAY(dropped, u64, 3);
BPF_PERCPU_ARRAY(rate, struct rate_slot, 1);
BPF_HASH(turn_sockets, u64, struct turn_state, TURN_SOCKETS);

static __always_inline void count_drop(u32 slot)
{
    u64 *n = dropped.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline void send_turn(struct turn_state *st, u64 now, u8 final)
{
    u32 zero = 0;
    struct rate_slot *r = rate.lookup(&zero);
    if (r) {
        u64 second = now / 1000000000ULL;
        if (r->second != second) {
            r->second = second;
            r->sent = 0;
        }
        if (r->sent >= TURN_RATE) {
            count_drop(DROP_RATE);
            return;
        }
        r->sent++;
    }
    st->rec.final = final;
    if (turns.ringbuf_output(&st->rec, sizeof(st->rec), BPF_RB_NO_WAKEUP))
        count_drop(DROP_RING_FULL);
    st->dirty = 0;
}

/* The state of a server-side socket on a watched port, made on first sight. The local port
 * is checked first: every other socket's event (clients of the watched ports included)
 * ends here with one read and an array lookup, before any hash lookup. */
static __always_inline struct turn_state *turn_socket(struct sock *sk, u64 now)
{
    u16 port = 0;
    if (bpf_probe_read_kernel(&port, sizeof(port), &sk->__sk_common.skc_num) || !port_watched(port))
        return 0;
    u64 key = (u64)sk;
    struct turn_state *st = turn_sockets.lookup(&key);
    if (st)
        return st;
    u8 state = 0;
    bpf_probe_read_kernel(&state, sizeof(state), (void *)&sk->__sk_common.skc_state);
    if (state == TCP_LISTEN || state == TCP_CLOSE)
        return 0;
    struct turn_state fresh = {};
    fresh.rec.sock = key;
    fresh.rec.born_ns = now;
    fresh.rec.lport = port;
    __be16 rport = 0;
    bpf_probe_read_kernel(&rport, sizeof(rport), &sk->__sk_common.skc_dport);
    fresh.rec.rport = ntohs(rport);
    bpf_probe_read_kernel(&fresh.rec.family, sizeof(fresh.rec.family), &sk->__sk_common.skc_family);
    if (fresh.rec.family == AF_INET6) {
        bpf_probe_read_kernel(fresh.rec.laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
        bpf_probe_read_kernel(fresh.rec.raddr, 16, &sk->__sk_common.skc_v6_daddr);
    } else {
        bpf_probe_read_kernel(fresh.rec.laddr, 4, &sk->__sk_common.skc_rcv_saddr);
        bpf_probe_read_kernel(fresh.rec.raddr, 4, &sk->__sk_common.skc_daddr);
    }
    int err = turn_sockets.insert(&key, &fresh);
    if (err && err != -EEXIST) {
        count_drop(DROP_SOCKETS_FULL);
        return 0;
    }
    return turn_sockets.lookup(&key);
}

/* A new turn begins: the one before is sent first if it has news. */
static __always_inline void begin_turn(struct turn_state *st, u64 first_in, u64 now)
{
    if (st->dirty && (st->rec.bytes_in || st->rec.bytes_out))
        send_turn(st, now, 1);
    st->rec.turn++;
    st->rec.first_in_ns = first_in;
    st->rec.first_read_ns = 0;
    st->rec.reader = 0;
    st->rec.last_read_ns = 0;
    st->rec.first_write_ns = 0;
    st->rec.last_write_ns = 0;
    st->rec.acked_ns = 0;
    st->rec.bytes_in = 0;
    st->rec.bytes_out = 0;
    st->phase = TURN_REQUEST;
    st->dirty = 1;
}

static __always_inline int on_tcp_recv(void *ctx, struct sock *sk, u32 bytes)
{
    u64 now = bpf_ktime_get_ns();
    struct turn_state *st = turn_socket(sk, now);
    if (!st)
        return 0;
    if (st->phase != TURN_REQUEST)
        begin_turn(st, 0, now); /* its arrival was not seen */
    if (!st->rec.first_read_ns) {
        st->rec.first_read_ns = now;
        st->rec.reader = (u32)bpf_get_current_pid_tgid();
    }
    st->rec.last_read_ns = now;
    st->rec.bytes_in += bytes;
    if (!st->rec.cgroup) /* a connection's reader stays in its cgroup: taken once */
        st->rec.cgroup = bpf_get_current_cgroup_id();
    st->dirty = 1;
    return 0;
}

static __always_inline int on_tcp_send(void *ctx, struct sock *sk, u32 bytes)
{
    u64 now = bpf_ktime_get_ns();
    struct turn_state *st = turn_socket(sk, now);
    if (!st)
        return 0;
    if (st->phase == TURN_IDLE)
        begin_turn(st, 0, now); /* the server speaks first (an HTTP/2 preface) */
    if (st->phase != TURN_RESPONSE) {
        st->phase = TURN_RESPONSE;
        st->rec.first_write_ns = now;
    }
    st->rec.last_write_ns = now;
    st->rec.bytes_out += bytes;
    st->rec.acked_ns = 0;
    bpf_probe_read_kernel(&st->end_seq, sizeof(st->end_seq), (void *)sk + TCP_WRITE_SEQ_OFFSET);
    if (!st->rec.cgroup)
        st->rec.cgroup = bpf_get_current_cgroup_id();
    st->dirty = 1;
    return 0;
}

#include "tcp_hooks.h"

#ifdef HAVE_SK_DATA_READY
/* Data (or a FIN) became readable: the first arrival after a response begins a turn. */
TRACEPOINT_PROBE(sock, sk_data_ready)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct turn_state *st = turn_socket((struct sock *)args->skaddr, now);
    if (st && st->phase != TURN_REQUEST)
        begin_turn(st, now, now);
    return 0;
}
#endif

/* An incoming segment on an established socket, before TCP processes it: does its ACK
 * reach the end of what the response wrote? */
TRACEPOINT_PROBE(tcp, tcp_probe)
{
    if (!port_watched(args->sport))
        return 0; /* sport is the local port, host order */
    u64 key = (u64)args->skaddr;
    struct turn_state *st = turn_sockets.lookup(&key);
    if (!st || st->phase != TURN_RESPONSE || st->rec.acked_ns)
        return 0;
    unsigned char *data = 0;
    __be32 ack = 0;
    if (bpf_probe_read_kernel(&data, sizeof(data), (void *)args->skbaddr + SKB_DATA_OFFSET) ||
        bpf_probe_read_kernel(&ack, sizeof(ack), data + offsetof(struct tcphdr, ack_seq)))
        return 0;
    if ((s32)(ntohl(ack) - st->end_seq) < 0)
        return 0;
    u64 now = bpf_ktime_get_ns();
    st->rec.acked_ns = now;
    send_turn(st, now, 0);
    return 0;
}

static __always_inline void forget(const void *skaddr)
{
    u64 key = (u64)skaddr;
    struct turn_state *st = turn_sockets.lookup(&key);
    if (!st)
        return;
    if (st->dirty && (st->rec.bytes_in || st->rec.bytes_out))
        send_turn(st, bpf_ktime_get_ns(), 1);
    turn_sockets.delete(&key);
}

TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
    forget(args->skaddr);
    return 0;
}

/* A connection starts at this address: whatever an earlier socket there left is gone. */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol == IPPROTO_TCP && (args->newstate == TCP_SYN_SENT || args->newstate == TCP_SYN_RECV))
        forget(args->skaddr);
    return 0;
}
