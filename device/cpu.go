package device

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// CPUUUID is the UUID of the CPU device.
const CPUUUID = "cpu"

// cgroup v1 reports "no memory limit" as a huge page-aligned number.
const v1NoLimit = uint64(1) << 62

// CPUSource reads the CPU device from a Linux filesystem: /proc/meminfo,
// /proc/cpuinfo, /proc/self/cgroup and the cgroup v1 or v2 hierarchy under
// /sys/fs/cgroup.
type CPUSource struct {
	// Root is the filesystem root, os.DirFS("/") in production and a
	// testdata directory in tests. Paths inside it have no leading slash.
	Root fs.FS
	// NumCPU is the number of CPUs the process may run on
	// (runtime.NumCPU, which honours the affinity mask).
	NumCPU func() int
}

// Read returns the CPU device: cores capped by the cgroup CPU quota, and
// memory from MemTotal/MemAvailable capped by the cgroup memory limit minus
// what the cgroup already uses. Health, Visible and CUDAOrdinal are filled in
// by the inventory.
func (c CPUSource) Read() (Device, error) {
	d := Device{Kind: KindCPU, UUID: CPUUUID, Name: "CPU", CUDAOrdinal: -1}
	if c.NumCPU != nil {
		d.CPUCores = float64(c.NumCPU())
	}
	if name := cpuModel(c.Root); name != "" {
		d.Name = name
	}
	memTotal, memAvail, err := readMeminfo(c.Root)
	if err != nil {
		return d, err
	}
	lim, err := readCgroupLimits(c.Root)
	if err != nil {
		return d, err
	}
	if lim.cpuQuota > 0 && (d.CPUCores == 0 || lim.cpuQuota < d.CPUCores) {
		d.CPUCores = lim.cpuQuota
	}
	total, free := memTotal, memAvail
	if lim.memLimit > 0 && lim.memLimit < total {
		total = lim.memLimit
		room := uint64(0)
		if lim.memCurrent < lim.memLimit {
			room = lim.memLimit - lim.memCurrent
		}
		free = min(free, room)
	}
	free = min(free, total)
	d.MemoryTotalBytes, d.MemoryFreeBytes, d.MemoryUsedBytes = total, free, total-free
	return d, nil
}

func cpuModel(root fs.FS) string {
	b, err := fs.ReadFile(root, "proc/cpuinfo")
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// readMeminfo returns MemTotal and MemAvailable in bytes.
func readMeminfo(root fs.FS) (total, avail uint64, err error) {
	b, err := fs.ReadFile(root, "proc/meminfo")
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/meminfo: %w", err)
	}
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "MemTotal" && k != "MemAvailable") {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			return 0, 0, fmt.Errorf("/proc/meminfo: %s has no value", k)
		}
		n, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/meminfo: %s value %q: %w", k, fields[0], err)
		}
		if len(fields) > 1 && fields[1] == "kB" {
			n *= 1024
		}
		if k == "MemTotal" {
			total, haveTotal = n, true
		} else {
			avail, haveAvail = n, true
		}
	}
	if !haveTotal {
		return 0, 0, errors.New("/proc/meminfo: no MemTotal line")
	}
	if !haveAvail { // kernels before 3.14
		avail = total
	}
	return total, avail, nil
}

type cgroupLimits struct {
	cpuQuota   float64 // cores; 0 means no limit
	memLimit   uint64  // bytes; 0 means no limit
	memCurrent uint64  // bytes the cgroup uses now
}

// readCgroupLimits finds the process's cgroup in /proc/self/cgroup and
// reads its CPU and memory limits, v2 (unified) or v1. A missing
// /proc/self/cgroup means no limits.
func readCgroupLimits(root fs.FS) (cgroupLimits, error) {
	b, err := fs.ReadFile(root, "proc/self/cgroup")
	if errors.Is(err, fs.ErrNotExist) {
		return cgroupLimits{}, nil
	}
	if err != nil {
		return cgroupLimits{}, fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	var lim cgroupLimits
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		controllers, cgPath := parts[1], parts[2]
		if parts[0] == "0" && controllers == "" {
			v2, err := readCgroupV2(root, cgPath)
			if err != nil {
				return lim, err
			}
			// A v2 line alongside v1 lines (hybrid mode) carries no
			// controllers we use unless the v1 lines set nothing.
			if lim.cpuQuota == 0 {
				lim.cpuQuota = v2.cpuQuota
			}
			if lim.memLimit == 0 {
				lim.memLimit, lim.memCurrent = v2.memLimit, v2.memCurrent
			}
			continue
		}
		for _, ctl := range strings.Split(controllers, ",") {
			switch ctl {
			case "cpu":
				q, err := readCgroupV1CPU(root, controllers, cgPath)
				if err != nil {
					return lim, err
				}
				lim.cpuQuota = q
			case "memory":
				l, cur, err := readCgroupV1Memory(root, controllers, cgPath)
				if err != nil {
					return lim, err
				}
				lim.memLimit, lim.memCurrent = l, cur
			}
		}
	}
	return lim, nil
}

// cgroupDirs lists the directories to try for a cgroup path under a mount:
// the path itself, then its ancestors up to the mount root (inside a cgroup
// namespace or a container the path may not exist under the mount at all).
func cgroupDirs(mount, cgPath string) []string {
	p := path.Clean("/" + cgPath)
	var dirs []string
	for {
		dirs = append(dirs, path.Join(mount, p))
		if p == "/" {
			return dirs
		}
		p = path.Dir(p)
	}
}

// readCgroupV2 walks from the cgroup up to the root and keeps the tightest
// cpu.max and memory.max (a parent's limit binds its children too).
func readCgroupV2(root fs.FS, cgPath string) (cgroupLimits, error) {
	var lim cgroupLimits
	for _, dir := range cgroupDirs("sys/fs/cgroup", cgPath) {
		if b, err := fs.ReadFile(root, dir+"/cpu.max"); err == nil {
			fields := strings.Fields(string(b))
			if len(fields) >= 1 && fields[0] != "max" {
				quota, err := strconv.ParseFloat(fields[0], 64)
				if err != nil {
					return lim, fmt.Errorf("/%s/cpu.max: quota %q: %w", dir, fields[0], err)
				}
				period := 100000.0
				if len(fields) >= 2 {
					if period, err = strconv.ParseFloat(fields[1], 64); err != nil || period <= 0 {
						return lim, fmt.Errorf("/%s/cpu.max: period %q is not a positive number", dir, fields[1])
					}
				}
				if c := quota / period; lim.cpuQuota == 0 || c < lim.cpuQuota {
					lim.cpuQuota = c
				}
			}
		}
		if b, err := fs.ReadFile(root, dir+"/memory.max"); err == nil {
			s := strings.TrimSpace(string(b))
			if s != "max" {
				n, err := strconv.ParseUint(s, 10, 64)
				if err != nil {
					return lim, fmt.Errorf("/%s/memory.max: %q: %w", dir, s, err)
				}
				if lim.memLimit == 0 || n < lim.memLimit {
					lim.memLimit = n
					cur, err := readUint(root, dir+"/memory.current")
					if err != nil {
						return lim, err
					}
					lim.memCurrent = cur
				}
			}
		}
	}
	return lim, nil
}

func readCgroupV1CPU(root fs.FS, controllers, cgPath string) (float64, error) {
	for _, dir := range v1Dirs(controllers, "cpu", cgPath) {
		b, err := fs.ReadFile(root, dir+"/cpu.cfs_quota_us")
		if err != nil {
			continue
		}
		quota, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/%s/cpu.cfs_quota_us: %w", dir, err)
		}
		if quota <= 0 {
			return 0, nil
		}
		period, err := readUint(root, dir+"/cpu.cfs_period_us")
		if err != nil {
			return 0, err
		}
		if period == 0 {
			return 0, fmt.Errorf("/%s/cpu.cfs_period_us is 0", dir)
		}
		return float64(quota) / float64(period), nil
	}
	return 0, nil
}

func readCgroupV1Memory(root fs.FS, controllers, cgPath string) (limit, current uint64, err error) {
	for _, dir := range v1Dirs(controllers, "memory", cgPath) {
		if _, err := fs.Stat(root, dir+"/memory.limit_in_bytes"); err != nil {
			continue
		}
		limit, err := readUint(root, dir+"/memory.limit_in_bytes")
		if err != nil {
			return 0, 0, err
		}
		if limit >= v1NoLimit {
			return 0, 0, nil
		}
		current, err := readUint(root, dir+"/memory.usage_in_bytes")
		if err != nil {
			return 0, 0, err
		}
		return limit, current, nil
	}
	return 0, 0, nil
}

// v1Dirs lists where a v1 controller's files may be: under the mount named
// after the controller list (cpu,cpuacct) or after the controller alone.
func v1Dirs(controllers, ctl, cgPath string) []string {
	dirs := cgroupDirs("sys/fs/cgroup/"+controllers, cgPath)
	if controllers != ctl {
		dirs = append(dirs, cgroupDirs("sys/fs/cgroup/"+ctl, cgPath)...)
	}
	return dirs
}

func readUint(root fs.FS, name string) (uint64, error) {
	b, err := fs.ReadFile(root, name)
	if err != nil {
		return 0, fmt.Errorf("read /%s: %w", name, err)
	}
	s := strings.TrimSpace(string(b))
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/%s: %q is not a number: %w", name, s, err)
	}
	return n, nil
}
