package device

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// DefaultIgnoredXids are the application-level Xids NVIDIA's Kubernetes device
// plugin ignores because the GPU is still healthy after them: 13 graphics
// engine exception, 31 GPU memory page fault, 43 GPU stopped processing, 45
// preemptive cleanup, 68 video processor exception, 109 context switch
// timeout. They are counted, never turned into a health change.
var DefaultIgnoredXids = []uint64{13, 31, 43, 45, 68, 109}

// Environment variables that adjust the Xid policy, with the meaning of the
// device plugin's DP_DISABLE_HEALTHCHECKS / DP_ENABLE_HEALTHCHECKS.
const (
	// EnvDisableXids is "all" (or "xids") to ignore every Xid, or a comma
	// list of Xids to ignore in addition to DefaultIgnoredXids.
	EnvDisableXids = "KASMINA_DISABLE_XIDS"
	// EnvEnableXids is a comma list of Xids that always count, even if the
	// default list or EnvDisableXids ignores them, or "all" to ignore none.
	EnvEnableXids = "KASMINA_ENABLE_XIDS"
)

// XidPolicy decides which Xids change a device's health.
type XidPolicy struct {
	ignoreAll bool
	ignore    map[uint64]bool
	enforce   map[uint64]bool
	enableAll bool
}

// NewXidPolicy builds the policy from the values of KASMINA_DISABLE_XIDS and
// KASMINA_ENABLE_XIDS. Malformed entries are skipped and reported in
// warnings, as the device plugin logs and ignores them.
func NewXidPolicy(disable, enable string) (XidPolicy, []string) {
	p := XidPolicy{ignore: map[uint64]bool{}, enforce: map[uint64]bool{}}
	for _, x := range DefaultIgnoredXids {
		p.ignore[x] = true
	}
	var warnings []string
	all, list, w := parseXidList(EnvDisableXids, disable)
	warnings = append(warnings, w...)
	p.ignoreAll = all
	for _, x := range list {
		p.ignore[x] = true
	}
	all, list, w = parseXidList(EnvEnableXids, enable)
	warnings = append(warnings, w...)
	p.enableAll = all
	for _, x := range list {
		p.enforce[x] = true
	}
	return p, warnings
}

func parseXidList(name, v string) (all bool, list []uint64, warnings []string) {
	v = strings.TrimSpace(v)
	if v == "" {
		return false, nil, nil
	}
	if strings.EqualFold(v, "all") || strings.EqualFold(v, "xids") {
		return true, nil, nil
	}
	for _, field := range strings.Split(v, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		x, err := strconv.ParseUint(field, 10, 64)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("%s: ignoring %q: not a non-negative Xid number", name, field))
			continue
		}
		list = append(list, x)
	}
	return false, list, warnings
}

// Ignored reports whether an Xid is only counted, not acted on.
func (p XidPolicy) Ignored(xid uint64) bool {
	if p.enableAll || p.enforce[xid] {
		return false
	}
	return p.ignoreAll || p.ignore[xid]
}

// IgnoredList returns the ignored Xids in ascending order ("all" is reported
// as nil plus all=true).
func (p XidPolicy) IgnoredList() (list []uint64, all bool) {
	if p.enableAll {
		return nil, false
	}
	if p.ignoreAll {
		return nil, true
	}
	for x := range p.ignore {
		if !p.enforce[x] {
			list = append(list, x)
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i] < list[j] })
	return list, false
}

// ClassifyXid gives the health a critical Xid leaves a device in, with a
// reason and a suggested action. Xids not in the table are unhealthy, the
// conservative default.
func ClassifyXid(xid uint64) Health {
	switch xid {
	case 48:
		return Health{State: HealthUnhealthy, Reason: "double-bit ECC error (Xid 48)", Action: "move work off this GPU and reset it"}
	case 61, 62:
		return Health{State: HealthUnhealthy, Reason: fmt.Sprintf("internal micro-controller error (Xid %d)", xid), Action: "move work off this GPU and reset it"}
	case 63:
		return Health{State: HealthDegraded, Reason: "ECC page retirement or row remapping recorded (Xid 63)", Action: "reset the GPU at the next maintenance window to apply the remap"}
	case 64:
		return Health{State: HealthUnhealthy, Reason: "ECC page retirement or row remapping failed (Xid 64)", Action: "move work off this GPU, reset it, contact support if it recurs"}
	case 74:
		return Health{State: HealthUnhealthy, Reason: "NVLink error (Xid 74)", Action: "move work off this GPU, reset it and check its NVLinks"}
	case 79:
		return Health{State: HealthLost, Reason: "GPU has fallen off the bus (Xid 79)", Action: "move work off this GPU; reset it or reboot the node"}
	case 92:
		return Health{State: HealthDegraded, Reason: "high single-bit ECC error rate (Xid 92)", Action: "keep watching; reset the GPU if it recurs"}
	case 94:
		return Health{State: HealthDegraded, Reason: "contained ECC error (Xid 94)", Action: "the GPU takes new work; reset it at the next maintenance window"}
	case 95:
		return Health{State: HealthUnhealthy, Reason: "uncontained ECC error (Xid 95)", Action: "move work off this GPU and reset it"}
	case 119, 120:
		return Health{State: HealthUnhealthy, Reason: fmt.Sprintf("GSP firmware error (Xid %d)", xid), Action: "move work off this GPU and reset it"}
	}
	return Health{State: HealthUnhealthy, Reason: fmt.Sprintf("critical Xid %d", xid), Action: "move work off this GPU; reset it if the Xid recurs"}
}

func formatUint(x uint64) string { return strconv.FormatUint(x, 10) }
