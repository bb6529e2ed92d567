//go:build ignore

/*
 * tc programs of the raic router.
 *
 * classify_ingress runs on the LAN-side ingress. It tracks UDP flows, decides
 * whether a flow is latency-critical (LC) by port table, DSCP or userspace
 * promotion, and sets skb->mark on LC packets so policy routing can steer
 * them into the TUN device. It never drops.
 *
 * suppress_egress runs on the WAN egress (uploads) and the LAN egress
 * (downloads). Driven by per-interface configuration that userspace writes, it
 * holds back bulk traffic while a game runs: token-bucket cap, fractional
 * drops of the biggest flows, ECN CE instead of drops, DSCP rewrite to CS1 and
 * a cutoff window before the next LC packet is due. LC packets always pass
 * untouched.
 *
 * Both programs return TC_ACT_UNSPEC for packets they let through. Under tcx
 * that value is TCX_NEXT, so programs attached after ours (other products on
 * the same host) still run; under a legacy clsact direct-action filter it
 * continues with the next filter and then passes. Only suppress_egress ever
 * returns TC_ACT_SHOT.
 *
 * Headers are read by direct packet access in the common cases and with
 * bpf_skb_load_bytes otherwise (non-linear skbs, IPv6 extension headers);
 * packets are modified only with bpf_skb_store_bytes / bpf_l3_csum_replace.
 */

#include "include/raic_types.h"

/*
 * The license string decides which kernel helpers a program may call; a
 * GPL-compatible one keeps all of them available.
 */
char __license[] SEC("license") = "Dual BSD/GPL";

#define VERDICT_PASS TC_ACT_UNSPEC
#define NSEC_PER_SEC 1000000000ULL

/* Window over which suppress_egress estimates each bulk flow's rate. */
#define RATE_WINDOW_NS (100ULL * 1000 * 1000)

/* DSCP code points treated as latency-critical. */
#define DSCP_CS1 8
#define DSCP_CS3 24
#define DSCP_CS4 32
#define DSCP_CS5 40
#define DSCP_EF 46

#define ECN_MASK 0x3
#define ECN_CE 0x3

/* port_value.flags */
#define PORT_F_LC 0x1
#define PORT_F_PRESENT 0x2 /* set on every entry userspace wrote */

/* flow_stats.flags: why a flow is LC (and whether it was marked). */
#define FLOW_F_LC_PORT 0x1
#define FLOW_F_LC_DSCP 0x2
#define FLOW_F_LC_PROMOTED 0x4
#define FLOW_F_LC_ANY (FLOW_F_LC_PORT | FLOW_F_LC_DSCP | FLOW_F_LC_PROMOTED)
#define FLOW_F_MARKED 0x8

/* sup_config.flags */
#define SUP_F_ENABLED 0x1
#define SUP_F_ECN 0x2
#define SUP_F_DSCP_CS1 0x4

/* Fraction drops are in 1/65536 units; this value means every packet. */
#define FRACTION_ONE 65536

enum cls_counter {
	CLS_PACKETS = 0,
	CLS_NOT_IP,
	CLS_NOT_UDP,
	CLS_FRAGMENT,
	CLS_LC_PORT,
	CLS_LC_DSCP,
	CLS_LC_PROMOTED,
	CLS_BULK,
	CLS_MARKED,
	CLS_FLOW_NEW,
	CLS_FLOW_ERROR,
	CLS_COUNTER_MAX,
};

enum sup_counter {
	SUP_PASSED = 0,
	SUP_LC_PASSED,
	SUP_DROPPED_RATE,
	SUP_DROPPED_FRACTION,
	SUP_DROPPED_CUTOFF,
	SUP_ECN_MARKED,
	SUP_DSCP_REWRITTEN,
	SUP_NOT_IP,
	SUP_UNCONFIGURED,
	SUP_FLOW_ERROR,
	SUP_COUNTER_MAX,
};

/*
 * A flow's 5-tuple. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d) so
 * that one key layout serves both families. Ports are in host byte order.
 */
struct flow_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow_stats {
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;
	__u64 last_ns;
	__u64 min_gap_ns;  /* 0 until the second packet */
	__u64 ewma_gap_ns; /* gain 1/8; 0 until the second packet */
	__u32 app_id;
	__u32 flags;
};

struct port_value {
	__u32 app_id;
	__u32 flags;
};

struct cls_config {
	__u32 lc_mark; /* 0 disables marking */
	__u32 lc_mask; /* bits of skb->mark that lc_mark owns */
};

struct sup_config {
	__u64 rate_bps;            /* token rate, bytes/s; 0 = no cap */
	__u64 burst;               /* bucket depth, bytes */
	__u64 flow_rate_threshold; /* flows at or above this many bytes/s are eligible for fraction drops */
	__u32 drop_fraction;       /* 1/65536 units */
	__u32 max_drop_run;        /* 0 = no limit */
	__u32 flags;
	__u32 lc_mark;
	__u32 lc_mask;
	__u32 pad;
	__u64 deficit; /* bytes the bucket may go below zero (ECN-capable and ACK-sized packets) */
};

struct sup_cutoff {
	__u64 start_ns; /* T_next - T_reserve */
	__u64 end_ns;   /* T_next + epsilon */
};

struct sup_bucket {
	struct bpf_spin_lock lock;
	__u32 pad;
	__s64 tokens; /* below zero: the deficit ECN-marked and ACK-sized packets ran up */
	__u64 last_ns;
};

struct sup_flow {
	__u64 packets;
	__u64 bytes;
	__u64 win_start_ns;
	__u64 win_bytes;
	__u64 rate_bps; /* bytes/s over the last complete window */
	__u64 last_ns;
	__u32 drop_run; /* consecutive fraction drops */
	__u32 drops;
	__u64 ect_ns; /* last ECN-capable packet; 0 = none */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct cls_config);
	__uint(max_entries, 1);
} cls_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, CLS_COUNTER_MAX);
} cls_counters SEC(".maps");

/*
 * Port tables, one per protocol, indexed by port (host order). Arrays rather
 * than a hash: the JIT inlines an array lookup, and the classifier does two
 * per packet. 512 KiB each.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct port_value);
	__uint(max_entries, 65536);
} udp_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct port_value);
	__uint(max_entries, 65536);
} tcp_ports SEC(".maps");

/*
 * Flows userspace decided are LC (by ASN tables, timing, learned
 * destinations). A plain hash, not LRU: a promotion must not be evicted behind
 * userspace's back; userspace demotes explicitly and sees E2BIG when full.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct flow_key);
	__type(value, __u32); /* app id */
	__uint(max_entries, 16384);
} promoted_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
	__uint(max_entries, 65536);
} flow_stats SEC(".maps");

/*
 * Per-interface configuration, keyed by ifindex. Hash maps without
 * preallocation replace a value atomically (readers see the old or the new
 * value, never a mix), which an array's in-place copy does not guarantee.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct sup_config);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sup_config SEC(".maps");

/* Kept apart from sup_config because userspace rewrites it every packet interval. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct sup_cutoff);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sup_cutoff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct sup_bucket);
	__uint(max_entries, 64);
} sup_bucket SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct sup_flow);
	__uint(max_entries, 65536);
} sup_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SUP_COUNTER_MAX);
} sup_counters SEC(".maps");

struct pkt {
	struct flow_key key;
	__u32 l3_off;
	__u32 l4_off; /* start of the UDP/TCP header; 0 for fragments and other protocols */
	__u8 family; /* 4 or 6 */
	__u8 tos;    /* IPv4 TOS or IPv6 traffic class: DSCP << 2 | ECN */
	__u8 frag;   /* any IP fragment: ports unknown or untrustworthy */
	__u8 pad;
};

static __always_inline void count(void *map, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(map, &idx);
	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

#define PARSE_SLOW (-2)

/*
 * parse_fast reads the common cases (Ethernet, at most one VLAN tag, IPv4, or
 * IPv6 straight to UDP/TCP) by direct packet access, which costs no helper
 * calls. It returns 0 for IP, -1 for not IP, and PARSE_SLOW when the headers
 * are not in the linear area or IPv6 extension headers follow.
 */
static __always_inline int parse_fast(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 off = ETH_HLEN;
	__u8 nh;

	if ((void *)(eth + 1) > end)
		return PARSE_SLOW;
	__be16 proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = data + off;
		if ((void *)(vh + 1) > end)
			return PARSE_SLOW;
		proto = vh->h_vlan_encapsulated_proto;
		off += sizeof(*vh);
	}
	p->l3_off = off;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		if ((void *)(ip + 1) > end)
			return PARSE_SLOW;
		if (ip->version != 4 || ip->ihl < 5)
			return -1;
		p->family = 4;
		p->tos = ip->tos;
		p->frag = (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
		p->key.proto = ip->protocol;
		p->key.saddr[2] = bpf_htonl(0xffff);
		p->key.saddr[3] = ip->saddr;
		p->key.daddr[2] = bpf_htonl(0xffff);
		p->key.daddr[3] = ip->daddr;
		nh = ip->protocol;
		off += ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > end)
			return PARSE_SLOW;
		if (ip6->version != 6)
			return -1;
		nh = ip6->nexthdr;
		if (nh != IPPROTO_UDP && nh != IPPROTO_TCP)
			return PARSE_SLOW;
		p->family = 6;
		p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		p->key.proto = nh;
		__builtin_memcpy(p->key.saddr, ip6->saddr, 16);
		__builtin_memcpy(p->key.daddr, ip6->daddr, 16);
		off += sizeof(*ip6);
	} else {
		return -1;
	}

	if (!p->frag && (nh == IPPROTO_UDP || nh == IPPROTO_TCP)) {
		__be16 *ports = data + off;
		if ((void *)(ports + 2) > end)
			return PARSE_SLOW;
		p->key.sport = bpf_ntohs(ports[0]);
		p->key.dport = bpf_ntohs(ports[1]);
		p->l4_off = off;
	}
	return 0;
}

/*
 * parse_slow handles everything with bpf_skb_load_bytes: non-linear skbs and
 * IPv6 extension headers at variable offsets.
 */
static __always_inline int parse_slow(struct __sk_buff *skb, struct pkt *p)
{
	struct ethhdr eth;
	__u32 off = ETH_HLEN;
	__u8 nh;

	__builtin_memset(p, 0, sizeof(*p));
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return -1;
	__u16 proto = bpf_ntohs(eth.h_proto);
	if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
		struct vlan_hdr vh;
		if (bpf_skb_load_bytes(skb, off, &vh, sizeof(vh)) < 0)
			return -1;
		proto = bpf_ntohs(vh.h_vlan_encapsulated_proto);
		off += sizeof(vh);
	}
	p->l3_off = off;

	if (proto == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.version != 4 || ip.ihl < 5)
			return -1;
		p->family = 4;
		p->tos = ip.tos;
		p->frag = (bpf_ntohs(ip.frag_off) & (IP_MF | IP_OFFSET)) != 0;
		p->key.proto = ip.protocol;
		p->key.saddr[2] = bpf_htonl(0xffff);
		p->key.saddr[3] = ip.saddr;
		p->key.daddr[2] = bpf_htonl(0xffff);
		p->key.daddr[3] = ip.daddr;
		nh = ip.protocol;
		off += ip.ihl * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		if (ip6.version != 6)
			return -1;
		p->family = 6;
		p->tos = (ip6.priority << 4) | (ip6.flow_lbl[0] >> 4);
		__builtin_memcpy(p->key.saddr, ip6.saddr, 16);
		__builtin_memcpy(p->key.daddr, ip6.daddr, 16);
		nh = ip6.nexthdr;
		off += sizeof(ip6);

		/* A bounded walk: real traffic carries few extension headers. */
#pragma unroll
		for (int i = 0; i < 4; i++) {
			struct ipv6_opt_hdr opt;
			if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING &&
			    nh != IPPROTO_DSTOPTS && nh != IPPROTO_AH &&
			    nh != IPPROTO_FRAGMENT)
				break;
			if (bpf_skb_load_bytes(skb, off, &opt, sizeof(opt)) < 0)
				return 0;
			if (nh == IPPROTO_FRAGMENT) {
				p->frag = 1;
				nh = opt.nexthdr;
				break;
			}
			if (nh == IPPROTO_AH)
				off += (opt.hdrlen + 2) * 4;
			else
				off += (opt.hdrlen + 1) * 8;
			nh = opt.nexthdr;
		}
		p->key.proto = nh;
	} else {
		return -1;
	}

	if (!p->frag && (nh == IPPROTO_UDP || nh == IPPROTO_TCP)) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) == 0) {
			p->key.sport = bpf_ntohs(ports[0]);
			p->key.dport = bpf_ntohs(ports[1]);
			p->l4_off = off;
		}
	}
	return 0;
}

/* parse fills p from the packet; returns 0 for IPv4/IPv6, -1 otherwise. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	int ret = parse_fast(skb, p);
	if (ret == PARSE_SLOW)
		ret = parse_slow(skb, p);
	return ret;
}

static __always_inline int dscp_is_lc(__u8 dscp)
{
	return dscp == DSCP_EF || dscp == DSCP_CS3 || dscp == DSCP_CS4 ||
	       dscp == DSCP_CS5;
}

/* port_lookup returns the port table entry for proto/port, or NULL. */
static __always_inline struct port_value *port_lookup(__u8 proto, __u16 port)
{
	__u32 idx = port;
	struct port_value *pv;

	if (proto == IPPROTO_UDP)
		pv = bpf_map_lookup_elem(&udp_ports, &idx);
	else if (proto == IPPROTO_TCP)
		pv = bpf_map_lookup_elem(&tcp_ports, &idx);
	else
		return 0;
	if (pv && (pv->flags & PORT_F_PRESENT))
		return pv;
	return 0;
}

static __always_inline void reverse_key(const struct flow_key *k, struct flow_key *r)
{
	__builtin_memcpy(r->saddr, k->daddr, 16);
	__builtin_memcpy(r->daddr, k->saddr, 16);
	r->sport = k->dport;
	r->dport = k->sport;
	r->proto = k->proto;
}

static __always_inline void track_flow(struct pkt *p, __u32 len, __u32 app_id,
				       __u32 flags, __u64 now)
{
	struct flow_stats *fs = bpf_map_lookup_elem(&flow_stats, &p->key);
	if (!fs) {
		struct flow_stats init = {};
		init.packets = 1;
		init.bytes = len;
		init.first_ns = now;
		init.last_ns = now;
		init.app_id = app_id;
		init.flags = flags;
		if (bpf_map_update_elem(&flow_stats, &p->key, &init, BPF_NOEXIST) == 0) {
			count(&cls_counters, CLS_FLOW_NEW);
			return;
		}
		/* Another CPU created it first: fall through and update it. */
		fs = bpf_map_lookup_elem(&flow_stats, &p->key);
		if (!fs) {
			count(&cls_counters, CLS_FLOW_ERROR);
			return;
		}
	}

	__sync_fetch_and_add(&fs->packets, 1);
	__sync_fetch_and_add(&fs->bytes, len);
	/*
	 * The timing fields are estimates: a race between CPUs on one flow
	 * only costs one gap sample, so they are updated without a lock.
	 */
	__u64 last = fs->last_ns;
	if (now > last) {
		__u64 gap = now - last;
		if (fs->min_gap_ns == 0 || gap < fs->min_gap_ns)
			fs->min_gap_ns = gap;
		if (fs->ewma_gap_ns == 0)
			fs->ewma_gap_ns = gap;
		else
			fs->ewma_gap_ns += ((__s64)gap - (__s64)fs->ewma_gap_ns) >> 3;
		fs->last_ns = now;
	}
	if (app_id)
		fs->app_id = app_id;
	if ((fs->flags | flags) != fs->flags)
		__sync_fetch_and_or(&fs->flags, flags);
}

SEC("tc")
int classify_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	__u32 zero = 0;

	count(&cls_counters, CLS_PACKETS);
	if (parse(skb, &p) < 0) {
		count(&cls_counters, CLS_NOT_IP);
		return VERDICT_PASS;
	}
	if (p.key.proto != IPPROTO_UDP) {
		count(&cls_counters, CLS_NOT_UDP);
		return VERDICT_PASS;
	}
	if (p.frag) {
		/*
		 * Non-first fragments carry no ports: marking only some
		 * fragments of a datagram would split it between the TUN and
		 * the forward path, so fragments are left alone.
		 */
		count(&cls_counters, CLS_FRAGMENT);
		return VERDICT_PASS;
	}

	__u32 flags = 0, app_id = 0;
	struct port_value *pv = port_lookup(IPPROTO_UDP, p.key.dport);
	if (!pv)
		pv = port_lookup(IPPROTO_UDP, p.key.sport);
	if (pv) {
		app_id = pv->app_id;
		if (pv->flags & PORT_F_LC)
			flags |= FLOW_F_LC_PORT;
	}
	if (dscp_is_lc(p.tos >> 2))
		flags |= FLOW_F_LC_DSCP;
	__u32 *promo = bpf_map_lookup_elem(&promoted_flows, &p.key);
	if (promo) {
		flags |= FLOW_F_LC_PROMOTED;
		if (*promo)
			app_id = *promo;
	}

	if (flags & FLOW_F_LC_PORT)
		count(&cls_counters, CLS_LC_PORT);
	if (flags & FLOW_F_LC_DSCP)
		count(&cls_counters, CLS_LC_DSCP);
	if (flags & FLOW_F_LC_PROMOTED)
		count(&cls_counters, CLS_LC_PROMOTED);
	if (!flags)
		count(&cls_counters, CLS_BULK);

	if (flags) {
		struct cls_config *cfg = bpf_map_lookup_elem(&cls_config, &zero);
		if (cfg && cfg->lc_mark) {
			skb->mark = (skb->mark & ~cfg->lc_mask) | cfg->lc_mark;
			flags |= FLOW_F_MARKED;
			count(&cls_counters, CLS_MARKED);
		}
	}

	track_flow(&p, skb->len, app_id, flags, bpf_ktime_get_ns());
	return VERDICT_PASS;
}

/* is_lc reports whether suppress_egress must leave the packet alone. */
static __always_inline int is_lc(struct __sk_buff *skb, struct sup_config *cfg,
				 struct pkt *p, int parsed)
{
	if (cfg->lc_mark && (skb->mark & cfg->lc_mask) == cfg->lc_mark)
		return 1;
	if (!parsed)
		return 0;

	struct flow_key rev = {};
	reverse_key(&p->key, &rev);

	/* Userspace promotes a flow by its LAN-side tuple; replies match reversed. */
	if (bpf_map_lookup_elem(&promoted_flows, &p->key) ||
	    bpf_map_lookup_elem(&promoted_flows, &rev))
		return 1;

	if (!p->frag && (p->key.sport || p->key.dport)) {
		struct port_value *pv = port_lookup(p->key.proto, p->key.dport);
		if (pv && (pv->flags & PORT_F_LC))
			return 1;
		pv = port_lookup(p->key.proto, p->key.sport);
		if (pv && (pv->flags & PORT_F_LC))
			return 1;
	}

	/* The classifier's verdict covers flows found LC by DSCP on the LAN side. */
	struct flow_stats *fs = bpf_map_lookup_elem(&flow_stats, &p->key);
	if (fs && (fs->flags & FLOW_F_LC_ANY))
		return 1;
	fs = bpf_map_lookup_elem(&flow_stats, &rev);
	if (fs && (fs->flags & FLOW_F_LC_ANY))
		return 1;
	return 0;
}

static __always_inline struct sup_flow *bulk_flow(struct pkt *p, __u32 len, __u64 now)
{
	struct sup_flow *f = bpf_map_lookup_elem(&sup_flows, &p->key);
	if (!f) {
		struct sup_flow init = {};
		init.win_start_ns = now;
		init.last_ns = now;
		bpf_map_update_elem(&sup_flows, &p->key, &init, BPF_NOEXIST);
		f = bpf_map_lookup_elem(&sup_flows, &p->key);
		if (!f)
			return 0;
	}
	__sync_fetch_and_add(&f->packets, 1);
	__sync_fetch_and_add(&f->bytes, len);

	/* Rate estimate over fixed windows; races only blur one window. */
	__u64 start = f->win_start_ns;
	if (now > start && now - start >= RATE_WINDOW_NS) {
		f->rate_bps = f->win_bytes * NSEC_PER_SEC / (now - start);
		f->win_bytes = 0;
		f->win_start_ns = now;
	}
	__sync_fetch_and_add(&f->win_bytes, len);
	f->last_ns = now;
	return f;
}

/*
 * A flow is eligible for fraction drops when its rate over the last window,
 * or its bytes so far in the current one, reach the threshold userspace set.
 * Userspace ranks flows (it reads sup_flows) and lowers or raises the
 * threshold so that the biggest flows are hit first.
 */
static __always_inline int eligible(struct sup_config *cfg, struct sup_flow *f)
{
	__u64 thr = cfg->flow_rate_threshold;
	if (thr == 0)
		return 1;
	if (!f)
		return 0;
	return f->rate_bps >= thr ||
	       f->win_bytes * (NSEC_PER_SEC / RATE_WINDOW_NS) >= thr;
}

/* How a packet may use the bucket (bucket_take's mode). */
#define TAKE_FIT 0      /* only while the bucket is not in deficit */
#define TAKE_OVERDRAW 1 /* also in deficit, down to cfg->deficit (ECN-capable) */
#define TAKE_ALWAYS 2   /* always charged: the packet passes whatever the bucket says */

/*
 * A bucket charged by packets that always pass (LC, ACKs) stops at this many
 * deficits below zero, so a long flood of them cannot starve bulk for longer
 * than the refill needs to climb back.
 */
#define ALWAYS_FLOOR_DEFICITS 4

/* Outcomes of bucket_take. */
#define BUCKET_FIT 0  /* the bucket was not in deficit: tokens taken */
#define BUCKET_OVER 1 /* in deficit, within the bound: tokens taken */
#define BUCKET_DROP 2 /* in deficit beyond the bound: nothing taken */

/*
 * bucket_take charges len bytes to the interface's token bucket.
 *
 * A packet passes while the bucket is not in deficit, and is charged in full
 * even when that takes the bucket below zero. Judging the packet by the tokens
 * left rather than by whether all of len fits matters for the large packets
 * GRO and TSO make (a forwarded skb of two or more TCP segments): with a
 * bucket of a few milliseconds they would otherwise never fit and be dropped
 * whole. The deficit is paid back by the refill before more bulk passes.
 *
 * In deficit, an ECN-capable packet (TAKE_OVERDRAW), which will carry CE, still
 * passes until the deficit reaches cfg->deficit: the deficit is a virtual
 * queue, bytes the line must still carry beyond the rate, and bounding it
 * keeps ECN-capable senders capped too (a CE mark alone does not stop a packet
 * from joining the line's queue). Packets that pass anyway (TAKE_ALWAYS: LC
 * and ACK-sized ones) are charged in any case, since they use the line as
 * much as bulk does; otherwise ACKs arriving while the bucket is drained would
 * ride for free and the line would carry more than the cap.
 *
 * The refill credits whole bytes and advances last_ns only by the time those
 * bytes are worth, so the fractions of a byte that back-to-back packets earn
 * are kept rather than lost (losing them turned into a lower rate).
 */
static __always_inline int bucket_take(__u32 ifindex, struct sup_config *cfg,
				       __u32 len, __u64 now, int mode,
				       __s64 *level)
{
	struct sup_bucket *b = bpf_map_lookup_elem(&sup_bucket, &ifindex);
	if (!b) {
		struct sup_bucket init = {};
		init.tokens = (__s64)cfg->burst;
		init.last_ns = now;
		bpf_map_update_elem(&sup_bucket, &ifindex, &init, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&sup_bucket, &ifindex);
		if (!b)
			return BUCKET_FIT;
	}

	__s64 burst = (__s64)cfg->burst;
	__u64 rate = cfg->rate_bps;
	int ret = BUCKET_DROP;
	bpf_spin_lock(&b->lock);
	if (now > b->last_ns) {
		__u64 elapsed = now - b->last_ns;
		/* Capping elapsed keeps elapsed * rate below 2^64. */
		if (elapsed > NSEC_PER_SEC) {
			elapsed = NSEC_PER_SEC;
			b->last_ns = now - NSEC_PER_SEC;
		}
		__u64 credit = elapsed * rate / NSEC_PER_SEC;
		__s64 tokens = b->tokens + (__s64)credit;
		if (tokens >= burst) {
			b->tokens = burst;
			b->last_ns = now;
		} else if (credit > 0) {
			b->tokens = tokens;
			b->last_ns += credit * NSEC_PER_SEC / rate;
		}
	}
	*level = b->tokens;
	if (b->tokens > 0) {
		b->tokens -= len;
		ret = BUCKET_FIT;
	} else if (mode == TAKE_ALWAYS) {
		__s64 floor = -(__s64)(ALWAYS_FLOOR_DEFICITS * cfg->deficit);
		b->tokens = b->tokens - (__s64)len < floor ? floor : b->tokens - (__s64)len;
		ret = BUCKET_OVER;
	} else if (mode == TAKE_OVERDRAW && b->tokens > -(__s64)cfg->deficit) {
		b->tokens -= len;
		ret = BUCKET_OVER;
	}
	bpf_spin_unlock(&b->lock);
	return ret;
}

/*
 * wire_len is what a packet costs the line. A GSO packet (TSO from a sender
 * on this host, or GRO on the forwarding path) leaves as gso_segs packets, each
 * with its own copy of the headers, which skb->len counts once: a bucket that
 * charged skb->len would let a few percent more through than the line carries.
 */
static __always_inline __u32 wire_len(struct __sk_buff *skb, struct pkt *p)
{
	__u32 len = skb->len;
	__u32 segs = skb->gso_segs;
	if (segs <= 1 || segs > 1024 || !p->l4_off)
		return len;
	__u32 hdr = p->l4_off + 8; /* UDP */
	if (p->key.proto == IPPROTO_TCP) {
		__u8 doff;
		if (bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1) < 0)
			return len;
		hdr = p->l4_off + (doff >> 4) * 4;
	}
	return len + (segs - 1) * hdr;
}

/*
 * ACK_SIZED_L3 is the largest IP packet treated as a TCP ACK: the biggest IPv4
 * and TCP headers with options and no payload to speak of. Dropping ACKs saves
 * the upload almost nothing (the next ACK covers the same data) and stalls the
 * download they belong to, so they are charged to the bucket but never dropped.
 */
#define ACK_SIZED_L3 120

/* rewrite_tos writes a new IPv4 TOS / IPv6 traffic class byte. */
static __always_inline int rewrite_tos(struct __sk_buff *skb, struct pkt *p, __u8 tos)
{
	union {
		__u8 b[2];
		__u16 w;
	} old, new;

	if (bpf_skb_load_bytes(skb, p->l3_off, old.b, 2) < 0)
		return -1;
	new.w = old.w;
	if (p->family == 4) {
		new.b[1] = tos;
		if (bpf_skb_store_bytes(skb, p->l3_off, new.b, 2, 0) < 0)
			return -1;
		/* The IPv4 header checksum covers the TOS byte; the UDP/TCP one does not. */
		return bpf_l3_csum_replace(skb, p->l3_off + 10, old.w, new.w, 2);
	}
	new.b[0] = (old.b[0] & 0xf0) | (tos >> 4);
	new.b[1] = (old.b[1] & 0x0f) | (tos << 4);
	return bpf_skb_store_bytes(skb, p->l3_off, new.b, 2, 0);
}

SEC("tc")
int suppress_egress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct sup_config *cfg = bpf_map_lookup_elem(&sup_config, &ifindex);
	if (!cfg || !(cfg->flags & SUP_F_ENABLED)) {
		count(&sup_counters, SUP_UNCONFIGURED);
		count(&sup_counters, SUP_PASSED);
		return VERDICT_PASS;
	}

	struct pkt p = {};
	int parsed = parse(skb, &p) == 0;
	if (is_lc(skb, cfg, &p, parsed)) {
		/*
		 * LC packets always pass, but they use the line too: charging
		 * them keeps bulk plus LC under the cap, so the line's queue
		 * stays empty however much of the link the game takes.
		 */
		if (cfg->rate_bps) {
			__s64 level;
			bucket_take(ifindex, cfg, parsed ? wire_len(skb, &p) : skb->len,
				    bpf_ktime_get_ns(), TAKE_ALWAYS, &level);
		}
		count(&sup_counters, SUP_LC_PASSED);
		return VERDICT_PASS;
	}
	if (!parsed) {
		/* ARP, LLDP and the like are not bulk and are never held back. */
		count(&sup_counters, SUP_NOT_IP);
		count(&sup_counters, SUP_PASSED);
		return VERDICT_PASS;
	}

	__u64 now = bpf_ktime_get_ns();
	__u32 len = wire_len(skb, &p);
	struct sup_flow *f = bulk_flow(&p, len, now);
	if (!f)
		count(&sup_counters, SUP_FLOW_ERROR);

	/* ACK-sized TCP packets are never dropped (see ACK_SIZED_L3). */
	int ack = p.key.proto == IPPROTO_TCP && len <= p.l3_off + ACK_SIZED_L3;

	struct sup_cutoff *co = bpf_map_lookup_elem(&sup_cutoff, &ifindex);
	if (!ack && co && now >= co->start_ns && now <= co->end_ns) {
		if (f)
			__sync_fetch_and_add(&f->drops, 1);
		count(&sup_counters, SUP_DROPPED_CUTOFF);
		return TC_ACT_SHOT;
	}

	__u8 ecn = p.tos & ECN_MASK;
	int ect = ecn == 1 || ecn == 2;
	int use_ecn = (cfg->flags & SUP_F_ECN) && ect;
	/*
	 * A TCP sender clears ECT on retransmissions. Dropping those while the
	 * bucket is in deficit turns one congestion signal into a timeout, so
	 * a flow that sent ECN-capable packets in the last second may overdraw
	 * the bucket with its others too (unmarked: they cannot carry CE).
	 */
	int ecn_flow = use_ecn;
	if (f && use_ecn)
		f->ect_ns = now;
	else if (f && (cfg->flags & SUP_F_ECN) && f->ect_ns && now - f->ect_ns < NSEC_PER_SEC)
		ecn_flow = 1;
	__u8 tos = p.tos;

	if (cfg->drop_fraction && !ack && eligible(cfg, f)) {
		__u32 r = bpf_get_prandom_u32() & 0xffff;
		if (r < cfg->drop_fraction) {
			if (use_ecn) {
				tos |= ECN_CE;
			} else if (!f) {
				/* Without flow state the run limit cannot be kept: pass. */
			} else if (cfg->max_drop_run == 0 || f->drop_run < cfg->max_drop_run) {
				f->drop_run++;
				__sync_fetch_and_add(&f->drops, 1);
				count(&sup_counters, SUP_DROPPED_FRACTION);
				return TC_ACT_SHOT;
			} else {
				f->drop_run = 0;
			}
		} else if (f) {
			f->drop_run = 0;
		}
	}

	/*
	 * The bucket is charged last so that packets dropped above do not use
	 * tokens. Over the rate, an ECN-capable packet leaves with CE while the
	 * deficit allows (responsive senders slow down without a loss), an
	 * ACK-sized one leaves unmarked, and the rest are dropped.
	 */
	if (cfg->rate_bps) {
		__s64 level = 0;
		int mode = ack ? TAKE_ALWAYS : ecn_flow ? TAKE_OVERDRAW : TAKE_FIT;
		int res = bucket_take(ifindex, cfg, len, now, mode, &level);
		/*
		 * In deficit, CE is set with a probability that grows with the
		 * deficit, from 0 at zero to 1 at the bound: marking every
		 * packet at once would slow all flows in the same round trip and
		 * leave the line idle while they recover.
		 */
		if (res == BUCKET_OVER && use_ecn &&
		    (__u64)(-level) * 65536 > (__u64)(bpf_get_prandom_u32() & 0xffff) * cfg->deficit)
			tos |= ECN_CE;
		else if (res == BUCKET_DROP && !ack) {
			if (f)
				__sync_fetch_and_add(&f->drops, 1);
			count(&sup_counters, SUP_DROPPED_RATE);
			return TC_ACT_SHOT;
		}
	}

	if ((tos & ECN_MASK) == ECN_CE && ecn != ECN_CE)
		count(&sup_counters, SUP_ECN_MARKED);
	if ((cfg->flags & SUP_F_DSCP_CS1) && (tos >> 2) != DSCP_CS1) {
		tos = (DSCP_CS1 << 2) | (tos & ECN_MASK);
		count(&sup_counters, SUP_DSCP_REWRITTEN);
	}
	if (tos != p.tos && rewrite_tos(skb, &p, tos) < 0)
		count(&sup_counters, SUP_FLOW_ERROR);

	count(&sup_counters, SUP_PASSED);
	return VERDICT_PASS;
}
