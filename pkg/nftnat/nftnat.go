// Package nftnat programs the router's masquerade table through nf_tables
// netlink messages (github.com/google/nftables), so no nft binary is needed.
//
// The table is the router's own ("ip <name>"): installing replaces it in one
// transaction and deleting removes it, so nobody else's rules are touched.
// It holds, in nft's words:
//
//	table ip <name> {
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			oifname "<dev>" masquerade          # one rule per device
//		}
//		chain prerouting {                    # only with Keep
//			type filter hook prerouting priority mangle; policy accept;
//			iifname "<iif>" ct status snat meta mark set meta mark or <mark>
//		}
//	}
package nftnat

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// ErrNoNAT says the kernel cannot masquerade through nf_tables: no nf_tables
// at all, or no NAT or masquerade expression (CONFIG_NF_TABLES,
// CONFIG_NFT_NAT, CONFIG_NFT_MASQ, or their modules, are missing).
var ErrNoNAT = errors.New("nftnat: the kernel lacks nf_tables NAT (nf_tables, nft_nat, nft_masq)")

// Keep asks Masquerade to set Mark on packets coming in through Iif that
// belong to a connection the kernel already masquerades (ct status snat), so
// a policy rule on the mark keeps such connections on their route.
type Keep struct {
	Iif  string
	Mark uint32
}

// ipsSrcNAT is IPS_SRC_NAT in a conntrack entry's status bits.
const ipsSrcNAT = 1 << 4

// conn opens a netlink connection to nf_tables in the namespace nsFd (-1 or
// 0: the calling thread's).
func conn(nsFd int) (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if nsFd > 0 {
		opts = append(opts, nftables.WithNetNSFd(nsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, noNAT(err)
	}
	return c, nil
}

// noNAT maps what a kernel without the features answers to ErrNoNAT.
func noNAT(err error) error {
	if errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.EOPNOTSUPP) ||
		errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EAFNOSUPPORT) {
		return fmt.Errorf("%w: %v", ErrNoNAT, err)
	}
	return err
}

// ifname is an interface name as nf_tables compares it: NUL-padded to
// IFNAMSIZ.
func ifname(s string) []byte {
	b := make([]byte, 16)
	copy(b, s)
	return b
}

// Masquerade replaces table "ip <table>" in the namespace nsFd with one that
// masquerades IPv4 traffic leaving through each of devs and, with keep, marks
// packets of masqueraded connections. It returns an error wrapping ErrNoNAT
// when the kernel cannot.
func Masquerade(nsFd int, table string, devs []string, keep *Keep) error {
	c, err := conn(nsFd)
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: table}
	// Add then delete removes a leftover table whether or not there is one,
	// in the same transaction as the new one is made.
	c.AddTable(t)
	c.DelTable(t)
	t = c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: table})
	accept := nftables.ChainPolicyAccept
	post := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	})
	for _, d := range devs {
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(d)},
			&expr.Masq{},
		}})
	}
	if keep != nil {
		pre := c.AddChain(&nftables.Chain{
			Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept,
		})
		zero := binaryutil.NativeEndian.PutUint32(0)
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(keep.Iif)},
			&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(ipsSrcNAT), Xor: zero},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero},
			// mark = (mark & ^m) ^ m, which is mark | m.
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(^keep.Mark), Xor: binaryutil.NativeEndian.PutUint32(keep.Mark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}})
	}
	if err := c.Flush(); err != nil {
		return noNAT(fmt.Errorf("nftnat: install table ip %s: %w", table, err))
	}
	return nil
}

// Delete removes table "ip <table>" from the namespace nsFd if it exists.
func Delete(nsFd int, table string) error {
	c, err := conn(nsFd)
	if err != nil {
		if errors.Is(err, ErrNoNAT) {
			return nil // no nf_tables: nothing can be left over
		}
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: table}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftnat: delete table ip %s: %w", table, err)
	}
	return nil
}

// Rules describes what table "ip <table>" holds: per chain name, the number
// of masquerade statements. ok is false when there is no such table.
func Rules(nsFd int, table string) (masq map[string]int, ok bool, err error) {
	c, err := conn(nsFd)
	if err != nil {
		return nil, false, err
	}
	t, err := c.ListTableOfFamily(table, nftables.TableFamilyIPv4)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, false, nil
		}
		return nil, false, err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, true, err
	}
	masq = map[string]int{}
	for _, ch := range chains {
		if ch.Table.Name != t.Name {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, true, err
		}
		masq[ch.Name] += 0
		for _, r := range rules {
			for _, e := range r.Exprs {
				if _, is := e.(*expr.Masq); is {
					masq[ch.Name]++
				}
			}
		}
	}
	return masq, true, nil
}
