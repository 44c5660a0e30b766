// Numbers, money, sizes and times as the pages show them (the browser's locale).

const numberFormat = new Intl.NumberFormat();
const compactFormat = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

export function count(n) {
  return n === null || n === undefined ? "—" : numberFormat.format(n);
}

export function compact(n) {
  return n === null || n === undefined ? "—" : compactFormat.format(n);
}

/** The API's USD strings ("12.50", "0.000042") as "$12.50" / "$0.000042"; micros when given. */
export function usd(value) {
  if (value === null || value === undefined || value === "") return "—";
  const text = String(value);
  return text.startsWith("-") ? `−$${text.slice(1)}` : `$${text}`;
}

export function usdMicros(micros) {
  if (micros === null || micros === undefined) return "—";
  const sign = micros < 0 ? "−" : "";
  const abs = Math.abs(micros);
  const digits = abs % 10_000 === 0 ? 2 : 6;
  return `${sign}$${(abs / 1e6).toFixed(digits)}`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function dateTime(unixSeconds) {
  return unixSeconds ? dateTimeFormat.format(new Date(unixSeconds * 1000)) : "—";
}

export function clock(unixSeconds) {
  return unixSeconds ? timeFormat.format(new Date(unixSeconds * 1000)) : "—";
}

/** "3 minutes ago" / "in 2 hours". */
export function relative(unixSeconds, now = Date.now() / 1000) {
  if (!unixSeconds) return "—";
  const delta = unixSeconds - now;
  const abs = Math.abs(delta);
  const [value, unit] = abs < 60 ? [delta, "second"] : abs < 3600 ? [delta / 60, "minute"]
    : abs < 86400 ? [delta / 3600, "hour"] : [delta / 86400, "day"];
  return relativeFormat.format(Math.round(value), unit);
}

/** 75 -> "1 min 15 s", 7300 -> "2 h 1 min". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  const minutes = Math.round((s % 3600) / 60);
  return `${Math.floor(s / 3600)} h${minutes ? ` ${minutes} min` : ""}`;
}

export function decimal(value, digits = 4) {
  return value === null || value === undefined || Number.isNaN(value) ? "—" : Number(value).toFixed(digits);
}

export function percent(value, digits = 1) {
  if (value === null || value === undefined) return "—";
  return `${value > 0 ? "+" : ""}${Number(value).toFixed(digits)}%`;
}

/** A learning rate or gradient norm: 2e-4 stays readable. */
export function scientific(value) {
  if (value === null || value === undefined) return "—";
  return Math.abs(value) >= 0.01 || value === 0 ? Number(value).toFixed(3) : Number(value).toExponential(1);
}
