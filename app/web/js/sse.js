// A reader for the text/event-stream format (WHATWG HTML, "server-sent events") over a
// fetch() body, for streams that need request headers EventSource cannot send.

/** Yields {event, data, id} for every dispatched message; comments (pings) are skipped. */
export async function* readServerSentEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const onAbort = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  let buffer = "";
  let message = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A trailing \r may be the first half of \r\n (sse-starlette's separator): hold it
      // back, or the \n in the next chunk would read as an extra blank line.
      const carry = buffer.endsWith("\r") ? "\r" : "";
      const lines = (carry ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
      buffer = lines.pop() + carry; // the last piece may be a line still arriving
      for (const line of lines) {
        if (line === "") {
          if (message.data.length) {
            yield { event: message.event, data: message.data.join("\n"), id: message.id };
          }
          message = { event: "message", data: [], id: message.id };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") message.data.push(value);
        else if (field === "event") message.event = value;
        else if (field === "id" && !value.includes("\0")) message.id = value;
      }
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    reader.releaseLock?.();
  }
}
