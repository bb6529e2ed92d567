package router

import (
	"fmt"
	"net/netip"

	"github.com/raicnet/raic/detect"
)

// MaxASNRules bounds the policy rules made from the ASN table's ranges of the
// operators in the application table. The kernel walks rules in order for
// every packet from the LAN, so a few hundred cost little and many thousands
// would slow all forwarding; the shipped operators need a few dozen.
const MaxASNRules = 1024

// loadASN reads [transparent] asn_files into one table. Refused rows are
// logged with file:line (the first detect.MaxASNErrors of them) and counted;
// only a missing file or a set of files where nothing loads stops the router.
func (t *transparent) loadASN() (*detect.ASNTable, error) {
	files := t.cfg.ASNFiles
	if len(files) == 0 {
		return nil, nil
	}
	tab, rep, err := detect.LoadASNFiles(files)
	if err != nil {
		return nil, fmt.Errorf("transparent.asn_files: %w", err)
	}
	for _, e := range rep.Errors {
		t.r.log.Warn("transparent: ASN row skipped", "at", fmt.Sprintf("%s:%d", e.File, e.Line), "field", e.Field, "err", e.Msg)
	}
	t.r.reg.Counter("router_transparent_asn_rows_skipped_total",
		"Rows of asn_files refused as malformed or overlapping (logged with file:line).").Add(uint64(rep.Skipped))
	t.r.log.Info("transparent: ASN table loaded", "files", len(files), "ipv4_ranges", rep.V4, "ipv6_ranges", rep.V6, "rows_skipped", rep.Skipped)
	return tab, nil
}

// operatorPrefixes returns the IPv4 networks of the operators' ASNs (listed by
// number, or by owner name resolved in tab), at most MaxASNRules of them: the
// destinations whose first packet must reach the TUN device, for the
// classifier's ASN rule to see it.
func (t *transparent) operatorPrefixes(tab *detect.ASNTable) []netip.Prefix {
	if tab == nil {
		return nil
	}
	var asns []uint32
	for _, op := range t.tables.Operators {
		asns = append(asns, op.ASNs...)
		for _, o := range op.Owners {
			asns = append(asns, tab.ASNsOwnedBy(o)...)
		}
	}
	pfx := tab.PrefixesOf(asns)
	if len(pfx) > MaxASNRules {
		t.r.log.Warn("transparent: operator ASN ranges need more policy rules than allowed; the rest are matched only once captured otherwise",
			"prefixes", len(pfx), "max", MaxASNRules)
		t.r.reg.Counter("router_transparent_asn_rules_dropped_total",
			"Operator ASN prefixes beyond MaxASNRules, not given a policy rule.").Add(uint64(len(pfx) - MaxASNRules))
		pfx = pfx[:MaxASNRules]
	}
	t.r.log.Info("transparent: operator ASN prefixes routed to the proxy path", "asns", len(asns), "prefixes", len(pfx))
	return pfx
}
