// Package raic holds the RAIC codecs: the encoders that turn one game packet into
// the shards that travel over the uplinks, the decoder that turns arriving shards
// back into packets, the placement of shards over uplinks, and the theory (residual
// loss, bandwidth overhead) used to choose a scheme per session.
//
// # Schemes
//
//   - RAIC-1 (SchemeCopy): the packet itself; the router sends the one shard on
//     several uplinks, so the copies are byte-identical and share one Desc.
//   - RAIC-5 (SchemeXOR): k data shards and one XOR parity; any k of k+1 rebuild.
//   - RAIC-6 / k+m (SchemeRS): k data shards and m Reed-Solomon parity shards
//     (a Cauchy matrix over GF(2^8), polynomial 0x11d); any k of k+m rebuild.
//   - RAICT (SchemeTime): the packet, plus d shards "packet XOR packet-j" for
//     j = 1..d, so a packet lost entirely (a burst of up to d packets) is rebuilt
//     when the later packets arrive.
//
// Every scheme X-fragments first: a packet larger than the scheme's per-fragment
// capacity (or than Params.FragAbove) is split into nearly equal fragments, and
// each fragment is coded on its own, so any k shards of each fragment complete it.
//
// # Shard descriptor (Desc) per scheme
//
// Frag is common to all schemes: bits 0..6 hold the fragment index (0..127) and
// bit 7 is set on the last fragment. An unfragmented packet has Frag = 0x80.
//
//	scheme  Index                 Count         K     data
//	Copy    0                     1             1     the fragment bytes, as is
//	XOR     0..K-1 data, K parity K+1           k     S bytes of the coded block
//	RS      0..K-1 data, K.. par. K+M           k     S bytes of the coded block
//	Time    0 packet, j = P^P-j   d+1           1     see below
//	Time    0 (fragmented packet) 1             1     the fragment bytes, as is
//
// XOR and RS code a block of k*S bytes: the fragment, zero padding, and one final
// byte giving the padding length, so the receiver restores the exact length
// (S = ceil((len+1)/k), the padding is below k). All shards of a fragment have S
// bytes.
//
// A RAICT XOR shard j of packet P carries two bytes L(P) XOR L(P-j), big endian,
// then the bytes of P XOR the bytes of P-j, the shorter one padded with zeros.
// L(x) is len(x)+1, or 0 when x is not in the chain: a packet too large for one
// shard (it travels fragmented, without XOR shards), or a packet ID the encoder did
// not see. The XOR shard of P with an absent P-j is therefore a plain copy of P.
//
// RAICT relies on packet IDs rising by one: the XOR partner of P is found by
// ID, so a packet ID the sender skips is simply absent from the chain.
//
// # Decoder memory
//
// A Decoder keeps a ring of MaxGroups slots (about 72 bytes each, 72 KiB at
// the default 1,024) and shard buffers of 1,500 bytes from a pool capped by
// DecoderConfig.MaxBuffers, allocated on first use and reused after that.
//
// For one packet ID, shards with different bytes always differ in Desc (Index or
// Frag), and byte-identical copies share it, which the AEAD nonce relies on.
package raic
