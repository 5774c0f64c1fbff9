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
 * and the key of its peer is its own cookie: one lookup, no second map,
 * two map updates per connection and none at close (closing a socket takes
 * it out of every map).
 *
 * The verdict sends the skb out of the peer socket (flags 0: egress). When
 * the peer is not in the map the helper answers SK_DROP; the gateway makes
 * sure that cannot happen while bytes may arrive (both sockets go in before
 * the queued ClientHello is released). FIN, resets and half-close are not
 * seen here: user space handles them.
 *
 * Built by scripts/build-bpf.sh; the object beside this file is what the
 * gateway embeds.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* The legacy map definition: no BTF needed, so the object carries no
 * debug information and rebuilds byte for byte. */
struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

/* max_entries is set by the loader (two per connection the gateway may
 * hold); this is only the default. */
struct bpf_map_def SEC("maps") PEERS = {
	.type = BPF_MAP_TYPE_SOCKHASH,
	.key_size = sizeof(__u64),
	.value_size = sizeof(__u32),
	.max_entries = 65536,
	.map_flags = 0,
};

SEC("sk_skb/stream_verdict")
int meshgate_verdict(struct __sk_buff *skb)
{
	__u64 cookie;

	/* A bare FIN reaches the verdict as an skb without data. Redirected,
	 * the peer's send of zero bytes counts as a broken pipe and stops the
	 * peer's forwarding (EPIPE on the peer socket); the FIN itself is
	 * passed on by user space, so drop it here. */
	if (skb->len == 0)
		return SK_DROP;
	cookie = bpf_get_socket_cookie(skb);
	return bpf_sk_redirect_hash(skb, &PEERS, &cookie, 0);
}

char _license[] SEC("license") = "Dual MIT/GPL";
