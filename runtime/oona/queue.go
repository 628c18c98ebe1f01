package oona

// queueBlock is the number of entries in one block of an entryQueue.
const queueBlock = 512

// entryQueue is the publisher's FIFO of entries waiting to be sent: a list
// of fixed-size blocks, so that growing never copies what is queued (a
// ring doubling under the publisher's lock stalled every Publish for the
// copy, and copied each entry twice on average) and a drained queue gives
// its blocks back to the collector, keeping one spare.
type entryQueue struct {
	blocks [][]entry // blocks[0][head] is the oldest entry
	head   int
	n      int
	spare  []entry
}

// len returns the number of queued entries.
func (q *entryQueue) len() int { return q.n }

// push appends e.
func (q *entryQueue) push(e entry) {
	tail := q.head + q.n
	if tail/queueBlock == len(q.blocks) {
		b := q.spare
		q.spare = nil
		if b == nil {
			b = make([]entry, queueBlock)
		}
		q.blocks = append(q.blocks, b)
	}
	q.blocks[tail/queueBlock][tail%queueBlock] = e
	q.n++
}

// pop removes and returns the oldest entry; the queue must not be empty.
func (q *entryQueue) pop() entry {
	b := q.blocks[0]
	e := b[q.head]
	b[q.head] = entry{}
	q.head++
	q.n--
	if q.head == queueBlock || q.n == 0 {
		if q.n == 0 && q.head < queueBlock && len(q.blocks) == 1 {
			q.head = 0 // empty: reuse the block from its start
			return e
		}
		q.spare = b
		n := copy(q.blocks, q.blocks[1:])
		q.blocks[n] = nil
		q.blocks = q.blocks[:n]
		q.head = 0
	}
	return e
}
