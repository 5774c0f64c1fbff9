// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * meshgate's sockmap forwarding engine, kernel side.
 *
 * Each forwarded connection puts its two sockets into PEERS, each one
 * stored under the *other* socket's cookie:
 *
 *     PEERS[cookie(client)]   = upstream socket
 *     PEERS[cookie(upstream)] = client socket
 *
 * so a socket is in the map (and this program sees every skb it receives)
 * and the key of its peer is its own cookie: one lookup, no second map.
 *
 * The verdict sends the skb out of the peer socket (flags 0: egress). The
 * kernel queues a redirected skb on the peer without limit (the source's
 * receive window never closes, since the skb has left its queue), so the
 * program keeps a budget per direction in FLOWS, keyed by the source's
 * cookie:
 *
 *     in flight = bytes this direction took in - bytes that reached the
 *                 peer's send queue (the peer's write_seq since the first)
 *
 * Over BUDGET, an skb is passed (SK_PASS) to the source socket's own
 * receive queue instead, where it counts against the receive buffer, so
 * TCP closes the sender's window: that is the backpressure. User space
 * reads passed bytes and writes them to the peer, but only after every
 * redirected byte has reached the peer (it compares `taken - passed` here
 * with the peer's send counts from TCP), and it publishes how many it
 * wrote in WRITTEN. Order is kept by one rule: while a passed byte is not
 * yet written (passed > WRITTEN), every skb is passed too.
 *
 * User space learns of passed bytes from EVENTS, not from readiness (a
 * socket in the map reports itself readable after every skb, so polling it
 * for input would wake the gateway once per message): the source's cookie
 * is sent when a direction starts passing, and again for each skb passed
 * while user space says, in WRITTEN, that it waits.
 *
 * The kernel hands this program whole skbs whatever their sequence
 * numbers, and TCP queues a retransmitted segment that overlaps bytes it
 * already has whole (its own reader skips the repeat by copied_seq). So
 * the program keeps, per direction, the sequence number after the last
 * byte it took, and cuts a repeated head off before anything else; if it
 * cannot, it tells user space (EVENTS, the cookie with BROKEN set), which
 * resets the connection.
 *
 * FIN, resets and half-close are not seen here: user space handles them.
 * A socket leaves PEERS when it closes; user space deletes its FLOWS entry.
 *
 * Built by scripts/build-bpf.sh; the object beside this file is what the
 * gateway embeds. The BTF it carries lets the loader relocate the kernel
 * fields read below (tcp_sock's write_seq, sk_buff's control block) to the
 * running kernel's layout (CO-RE).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* The legacy map definition (the loader reads it without BTF). */
struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

/* The kernel's struct tcp_sock, only the field read here; the loader
 * relocates the offset to the running kernel's layout. */
struct tcp_sock {
	__u32 write_seq;
} __attribute__((preserve_access_index));

/* The kernel's struct sk_buff, only its control buffer, where TCP keeps
 * the skb's first sequence number (struct tcp_skb_cb starts with it). The
 * program's context is the kernel's sk_buff; the loader relocates the
 * offset. */
struct sk_buff {
	char cb[48];
} __attribute__((preserve_access_index));

/* One direction's accounting, keyed by its source socket's cookie,
 * written only here. Shared with user space (dataplane/src/sockmap.rs,
 * `Flow`): keep the layout. */
struct flow {
	/* Bytes the verdict took in (redirected and passed). */
	__u64 taken;
	/* Of those, bytes passed to user space. */
	__u64 passed;
	/* The peer's write_seq when the first skb arrived. */
	__u32 base;
	/* The sequence number after the last byte taken. */
	__u32 next_seq;
	/* Bytes of skbs that repeated bytes already taken, cut off. */
	__u64 trimmed;
	/* Non-zero once next_seq is known. */
	__u32 seq_known;
	__u32 reserved;
};

/* max_entries of both maps is set by the loader (two per connection the
 * gateway may hold); these are only defaults. */
struct bpf_map_def SEC("maps") PEERS = {
	.type = BPF_MAP_TYPE_SOCKHASH,
	.key_size = sizeof(__u64),
	.value_size = sizeof(__u32),
	.max_entries = 65536,
	.map_flags = 0,
};

struct bpf_map_def SEC("maps") FLOWS = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(__u64),
	.value_size = sizeof(struct flow),
	.max_entries = 65536,
	.map_flags = BPF_F_NO_PREALLOC,
};

/* What user space did with a direction's passed bytes, per source cookie;
 * written only by user space, and only for directions that passed any.
 * Shared with dataplane/src/sockmap.rs (`Written`): keep the layout. */
struct written {
	/* Passed bytes written to the peer. */
	__u64 bytes;
	/* Non-zero while user space waits for more passed bytes. */
	__u64 waiting;
};

struct bpf_map_def SEC("maps") WRITTEN = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(__u64),
	.value_size = sizeof(struct written),
	.max_entries = 65536,
	.map_flags = BPF_F_NO_PREALLOC,
};

/* Source cookies of directions with passed bytes for user space; with
 * BROKEN set, of a direction whose stream the program could not forward
 * whole (user space resets the connection). */
struct bpf_map_def SEC("maps") EVENTS = {
	.type = BPF_MAP_TYPE_RINGBUF,
	.key_size = 0,
	.value_size = 0,
	.max_entries = 256 * 1024,
	.map_flags = 0,
};

/* The event flag of a broken direction (socket cookies stay far below). */
#define BROKEN (1ULL << 63)

/* Bytes a direction may have in flight before its skbs are passed to user
 * space; set by the
 * loader (`--sockmap-budget-kib`). */
volatile const __u32 BUDGET = 4 << 20;

/* The peer's write_seq, or 0 with *ok cleared when the peer is gone. */
static __always_inline __u32 peer_write_seq(__u64 *cookie, int *ok)
{
	struct bpf_sock *peer;
	struct tcp_sock *tp;
	__u32 seq = 0;

	*ok = 0;
	peer = bpf_map_lookup_elem(&PEERS, cookie);
	if (!peer)
		return 0;
	tp = bpf_skc_to_tcp_sock(peer);
	if (tp) {
		seq = tp->write_seq;
		*ok = 1;
	}
	bpf_sk_release(peer);
	return seq;
}

/* Cuts the first `n` bytes off the skb (at most 0xfff at a time). */
static __always_inline int trim_head(struct __sk_buff *skb, __u32 n)
{
	for (int i = 0; i < 17 && n > 0; i++) {
		__u32 step = n > 0xfff ? 0xfff : n;

		if (bpf_skb_adjust_room(skb, -(__s32)step, 0, 0) != 0)
			return -1;
		n -= step;
	}
	return n == 0 ? 0 : -1;
}

SEC("sk_skb/stream_verdict")
int meshgate_verdict(struct __sk_buff *skb)
{
	struct flow *flow;
	struct sk_buff *kskb = (void *)skb;
	__u64 cookie;
	__u32 len = skb->len, seq, in_flight, tcp_seq = 0, end;
	int ok, have_seq;

	/* A bare FIN reaches the verdict as an skb without data. Redirected,
	 * the peer's send of zero bytes counts as a broken pipe and stops the
	 * peer's forwarding (EPIPE on the peer socket); the FIN itself is
	 * passed on by user space, so drop it here. */
	if (len == 0)
		return SK_DROP;
	cookie = bpf_get_socket_cookie(skb);
	seq = peer_write_seq(&cookie, &ok);
	if (!ok)
		return SK_DROP;
	flow = bpf_map_lookup_elem(&FLOWS, &cookie);
	if (!flow) {
		struct flow first = { .base = seq };

		bpf_map_update_elem(&FLOWS, &cookie, &first, BPF_NOEXIST);
		flow = bpf_map_lookup_elem(&FLOWS, &cookie);
		/* No room (the gateway sizes the map so this cannot happen):
		 * forward without a budget rather than lose the bytes. */
		if (!flow)
			return bpf_sk_redirect_hash(skb, &PEERS, &cookie, 0);
	}
	/* TCP queues a segment that repeats bytes it already has together
	 * with new ones (a retransmission overlapping what came before) whole,
	 * and the kernel hands the whole skb here: the repeated head is cut
	 * off, or the peer would receive those bytes twice. */
	have_seq = bpf_probe_read_kernel(&tcp_seq, sizeof(tcp_seq), &kskb->cb) == 0;
	end = tcp_seq + len;
	if (have_seq && flow->seq_known) {
		__s32 over = (__s32)(flow->next_seq - tcp_seq);

		if (over > 0) {
			/* Nothing new (TCP drops such segments before this). */
			if ((__u32)over >= len)
				return SK_DROP;
			if (trim_head(skb, over) != 0) {
				/* The stream can no longer be forwarded whole:
				 * user space resets the connection. */
				__u64 broken = cookie | BROKEN;

				bpf_ringbuf_output(&EVENTS, &broken, sizeof(broken), 0);
				return SK_DROP;
			}
			flow->trimmed += over;
			len = skb->len;
		}
	}
	if (have_seq) {
		flow->next_seq = end;
		flow->seq_known = 1;
	}
	/* Modulo 2^32: what is in flight is far below 4 GiB. */
	in_flight = (__u32)flow->taken - (seq - flow->base);
	flow->taken += len;
	/* Passing counts the bytes first (an atomic add, a full barrier) and
	 * only then reads whether user space waits, while user space
	 * publishes that it waits and only then reads the count: one of the
	 * two sees the other, so passed bytes are never left without an event
	 * and without a look. */
	if (flow->passed != 0) {
		struct written *written = bpf_map_lookup_elem(&WRITTEN, &cookie);

		/* A passed byte still waits in user space: this one goes
		 * behind it. */
		if (!written || written->bytes != flow->passed) {
			__sync_fetch_and_add(&flow->passed, len);
			written = bpf_map_lookup_elem(&WRITTEN, &cookie);
			if (written && written->waiting)
				bpf_ringbuf_output(&EVENTS, &cookie, sizeof(cookie), 0);
			return SK_PASS;
		}
	}
	if (in_flight + len > BUDGET) {
		/* Passing starts: user space must hear of it, or the bytes
		 * would wait for ever; if it cannot, stay over the budget. */
		__sync_fetch_and_add(&flow->passed, len);
		if (bpf_ringbuf_output(&EVENTS, &cookie, sizeof(cookie), 0) != 0) {
			__sync_fetch_and_add(&flow->passed, -(__s64)len);
			return bpf_sk_redirect_hash(skb, &PEERS, &cookie, 0);
		}
		return SK_PASS;
	}
	return bpf_sk_redirect_hash(skb, &PEERS, &cookie, 0);
}

char _license[] SEC("license") = "Dual MIT/GPL";
