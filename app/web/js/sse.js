// A reader for the text/event-stream format (WHATWG HTML, "server-sent events") over a
// fetch() body, for streams that need request headers EventSource cannot send.

/** Yields {event, data, id} for every dispatched message; comments (pings) are skipped. */
export async function* readServerSentEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const onAbort = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  const parser = new EventParser();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        // A held-back trailing \r was a line break after all.
        if (buffer.endsWith("\r")) yield* parser.lines([buffer.slice(0, -1)]);
        return;
      }
      buffer += value;
      // A trailing \r may be the first half of \r\n (sse-starlette's separator): hold it
      // back, or the \n in the next chunk would read as an extra blank line.
      const carry = buffer.endsWith("\r") ? "\r" : "";
      const lines = (carry ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
      buffer = lines.pop() + carry; // the last piece may be a line still arriving
      yield* parser.lines(lines);
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    reader.releaseLock?.();
  }
}

class EventParser {
  constructor() {
    this.message = { event: "message", data: [], id: null };
  }

  *lines(lines) {
    for (const line of lines) {
      if (line === "") {
        if (this.message.data.length) {
          yield { event: this.message.event, data: this.message.data.join("\n"), id: this.message.id };
        }
        // The last event id carries over to the next event, as in EventSource.
        this.message = { event: "message", data: [], id: this.message.id };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.message.data.push(value);
      else if (field === "event") this.message.event = value;
      else if (field === "id" && !value.includes("\0")) this.message.id = value;
    }
  }
}
