// A Go program whose heap grows through the runtime's own mmap calls (no libc, no malloc).
// Protocol as truth.h: "ready <pid>", wait for a line unless --now, allocate, print truth
// lines and "done", then wait for a line unless --exit.
//
// Truth lines:
//   truth main.leakBuffers <bytes>   bytes the function keeps reachable (large objects)
//   truth heap_sys <bytes>           runtime.MemStats.HeapSys after the leak, minus before
//   truth sys <bytes>                runtime.MemStats.Sys (all memory from the OS) at the end
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
)

const (
	buffers    = 48
	bufferSize = 4 << 20
)

var kept [][]byte

// leakBuffers keeps every buffer it allocates. Objects this large are allocated straight
// from the heap's pages, so the heap grows by about their size, mapped by the runtime.
//
//go:noinline
func leakBuffers() uint64 {
	var total uint64
	for i := 0; i < buffers; i++ {
		b := make([]byte, bufferSize)
		for j := 0; j < len(b); j += 4096 {
			b[j] = byte(i)
		}
		kept = append(kept, b)
		total += bufferSize
	}
	return total
}

func main() {
	now, exit := false, false
	for _, arg := range os.Args[1:] {
		switch arg {
		case "--now":
			now = true
		case "--exit":
			exit = true
		}
	}
	stdin := bufio.NewReader(os.Stdin)
	fmt.Printf("ready %d\n", os.Getpid())
	if !now {
		if _, err := stdin.ReadString('\n'); err != nil {
			return
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	leaked := leakBuffers()
	runtime.ReadMemStats(&after)
	fmt.Printf("truth main.leakBuffers %d\n", leaked)
	fmt.Printf("truth heap_sys %d\n", after.HeapSys-before.HeapSys)
	fmt.Printf("truth sys %d\n", after.Sys)
	fmt.Println("done")
	if !exit {
		stdin.ReadString('\n')
	}
	runtime.KeepAlive(kept)
}
