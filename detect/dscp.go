package detect

// DSCP code points the classifier reads (RFC 4594 names).
const (
	DSCPDF  uint8 = 0  // default forwarding
	DSCPCS1 uint8 = 8  // scavenger / low priority
	DSCPCS3 uint8 = 24 // broadcast video, signalling
	DSCPCS4 uint8 = 32 // real-time interactive (games)
	DSCPCS5 uint8 = 40 // signalling
	DSCPEF  uint8 = 46 // expedited forwarding (voice)
)

// DSCPVerdict is what a DSCP mark says about latency.
type DSCPVerdict int8

const (
	DSCPNeutral DSCPVerdict = 0  // says nothing
	DSCPLC      DSCPVerdict = 1  // EF, CS3, CS4, CS5
	DSCPNotLC   DSCPVerdict = -1 // DF, CS1
)

// dscpRules holds the prebuilt Rule strings so classification builds none.
var dscpRules = [64]string{DSCPEF: "dscp:EF", DSCPCS3: "dscp:CS3", DSCPCS4: "dscp:CS4", DSCPCS5: "dscp:CS5"}

// ClassifyDSCP returns the verdict of a 6-bit DSCP value (the upper six bits
// of the IPv4 TOS / IPv6 traffic class byte, already shifted down).
func ClassifyDSCP(dscp uint8) (DSCPVerdict, string) {
	switch dscp & 63 {
	case DSCPEF, DSCPCS3, DSCPCS4, DSCPCS5:
		return DSCPLC, dscpRules[dscp&63]
	case DSCPDF, DSCPCS1:
		return DSCPNotLC, ""
	}
	return DSCPNeutral, ""
}
