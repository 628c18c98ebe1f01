package device

import (
	"os"
	"strings"
	"testing"
	"testing/fstest"
)

func TestCPUSourceHonoursCgroupLimits(t *testing.T) {
	const (
		memTotal = 65536000 * 1024
		memAvail = 50000000 * 1024
	)
	cases := []struct {
		dir               string
		cores             float64
		total, free, used uint64
	}{
		{"cgroupv2", 2.5, 8 << 30, 5 << 30, 3 << 30},
		{"cgroupv2-nested", 4, 4 << 30, 4<<30 - 4000000000, 4000000000},
		{"cgroupv1", 1.5, 2 << 30, 1536 << 20, 512 << 20},
		{"nolimit", 16, memTotal, memAvail, memTotal - memAvail},
		{"nocgroup", 16, memTotal, memAvail, memTotal - memAvail},
	}
	for _, tc := range cases {
		t.Run(tc.dir, func(t *testing.T) {
			d, err := CPUSource{Root: os.DirFS("testdata/" + tc.dir), NumCPU: func() int { return 16 }}.Read()
			if err != nil {
				t.Fatal(err)
			}
			if d.Kind != KindCPU || d.UUID != CPUUUID || d.Name != "Test CPU @ 3.00GHz" {
				t.Errorf("identity = %s %q %q", d.Kind, d.UUID, d.Name)
			}
			if d.CPUCores != tc.cores {
				t.Errorf("cores = %v, want %v", d.CPUCores, tc.cores)
			}
			if d.MemoryTotalBytes != tc.total || d.MemoryFreeBytes != tc.free || d.MemoryUsedBytes != tc.used {
				t.Errorf("memory total/free/used = %d/%d/%d, want %d/%d/%d",
					d.MemoryTotalBytes, d.MemoryFreeBytes, d.MemoryUsedBytes, tc.total, tc.free, tc.used)
			}
		})
	}
}

func TestCPUSourceQuotaNeverRaisesCores(t *testing.T) {
	d, err := CPUSource{Root: os.DirFS("testdata/cgroupv2-nested"), NumCPU: func() int { return 2 }}.Read()
	if err != nil {
		t.Fatal(err)
	}
	if d.CPUCores != 2 {
		t.Fatalf("a 4-core quota on a 2-CPU affinity mask gave %v cores, want 2", d.CPUCores)
	}
}

func TestCPUSourceBadFilesNameTheFile(t *testing.T) {
	meminfo := &fstest.MapFile{Data: []byte("MemTotal: 1000 kB\nMemAvailable: 500 kB\n")}
	cases := []struct {
		name string
		fs   fstest.MapFS
		want string
	}{
		{"no meminfo", fstest.MapFS{}, "/proc/meminfo"},
		{"MemTotal missing", fstest.MapFS{"proc/meminfo": {Data: []byte("MemFree: 1 kB\n")}}, "no MemTotal"},
		{"MemTotal not a number", fstest.MapFS{"proc/meminfo": {Data: []byte("MemTotal: lots kB\n")}}, "MemTotal"},
		{"memory.max garbage", fstest.MapFS{"proc/meminfo": meminfo, "proc/self/cgroup": {Data: []byte("0::/\n")},
			"sys/fs/cgroup/memory.max": {Data: []byte("twelve\n")}}, "memory.max"},
		{"cpu.max period zero", fstest.MapFS{"proc/meminfo": meminfo, "proc/self/cgroup": {Data: []byte("0::/\n")},
			"sys/fs/cgroup/cpu.max": {Data: []byte("1000 0\n")}}, "cpu.max"},
		{"v1 quota garbage", fstest.MapFS{"proc/meminfo": meminfo, "proc/self/cgroup": {Data: []byte("3:cpu:/\n")},
			"sys/fs/cgroup/cpu/cpu.cfs_quota_us": {Data: []byte("x\n")}}, "cpu.cfs_quota_us"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CPUSource{Root: tc.fs}.Read()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestCPUSourceV1UnlimitedMemory(t *testing.T) {
	fs := fstest.MapFS{
		"proc/meminfo":     {Data: []byte("MemTotal: 1000 kB\nMemAvailable: 500 kB\n")},
		"proc/self/cgroup": {Data: []byte("5:memory:/\n")},
		"sys/fs/cgroup/memory/memory.limit_in_bytes": {Data: []byte("9223372036854771712\n")},
		"sys/fs/cgroup/memory/memory.usage_in_bytes": {Data: []byte("100\n")},
	}
	d, err := CPUSource{Root: fs}.Read()
	if err != nil {
		t.Fatal(err)
	}
	if d.MemoryTotalBytes != 1000*1024 || d.MemoryFreeBytes != 500*1024 {
		t.Fatalf("total/free = %d/%d, want MemTotal/MemAvailable", d.MemoryTotalBytes, d.MemoryFreeBytes)
	}
}
