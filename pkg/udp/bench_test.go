package udp

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkRead compares packets per second received on loopback by single
// ReadFrom calls and by ReadBatch with growing batch sizes. With the timer stopped,
// the receive queue is filled with 512 datagrams of 100 bytes (a typical game
// packet); then only the reads that drain it are timed, so the sender's cost (on
// the same two cores) does not cap the result. Run with -benchtime=300ms; the pkt/s
// metric is the table.
func BenchmarkRead(b *testing.B) {
	const fill = 512
	for _, batch := range []int{1, 8, 32, 64} {
		name := fmt.Sprintf("ReadBatch-%d", batch)
		if batch == 1 {
			name = "ReadFrom"
		}
		b.Run(name, func(b *testing.B) {
			rcv := listen(b, "udp4", Options{Local: lo4, RecvBuffer: 8 << 20})
			snd := listen(b, "udp4", Options{Local: lo4, SendBuffer: 8 << 20})
			out := newMsgs(MaxBatch, 100)
			for i := range out {
				out[i].N = 100
				out[i].Addr = rcv.LocalAddr()
			}
			msgs := newMsgs(batch, 2048)
			buf := make([]byte, 2048)
			b.ReportAllocs()
			b.ResetTimer()
			var spent time.Duration
			for done := 0; done < b.N; {
				b.StopTimer()
				chunk := min(fill, b.N-done)
				for q := chunk; q > 0; {
					n, err := snd.WriteBatch(out[:min(q, MaxBatch)])
					if err != nil {
						b.Fatal(err)
					}
					q -= n
				}
				b.StartTimer()
				start := time.Now()
				for got := 0; got < chunk; {
					if batch == 1 {
						if _, _, err := rcv.ReadFrom(buf); err != nil {
							b.Fatal(err)
						}
						got++
						continue
					}
					n, err := rcv.ReadBatch(msgs[:min(batch, chunk-got)])
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
				spent += time.Since(start)
				done += chunk
			}
			b.ReportMetric(float64(b.N)/spent.Seconds(), "pkt/s")
		})
	}
}

// BenchmarkWrite compares single WriteTo calls with WriteBatch. Nobody reads the
// destination, so the kernel drops what overflows its buffer; the cost measured is
// the sender's.
func BenchmarkWrite(b *testing.B) {
	for _, batch := range []int{1, 8, 32, 64} {
		name := fmt.Sprintf("WriteBatch-%d", batch)
		if batch == 1 {
			name = "WriteTo"
		}
		b.Run(name, func(b *testing.B) {
			rcv := listen(b, "udp4", Options{Local: lo4})
			snd := listen(b, "udp4", Options{Local: lo4})
			to := rcv.LocalAddr()
			out := newMsgs(batch, 100)
			for i := range out {
				out[i].N = 100
				out[i].Addr = to
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for sent := 0; sent < b.N; {
				if batch == 1 {
					if err := snd.WriteTo(out[0].Buf, to); err != nil {
						b.Fatal(err)
					}
					sent++
					continue
				}
				n, err := snd.WriteBatch(out)
				if err != nil {
					b.Fatal(err)
				}
				sent += n
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pkt/s")
		})
	}
}
