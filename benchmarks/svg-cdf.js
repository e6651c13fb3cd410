'use strict'

// A latency CDF as a hand-written SVG: latency on a log scale across, and the
// percentile down the side on a tail scale (-log10(1 - p)), so that 90, 99,
// 99.9 and 99.99 are evenly spaced and the tail, where hedging acts, is
// readable. Every round of a contender is a thin line; its median round (by
// p99) is drawn bold.

const WIDTH = 760
const HEIGHT = 440
const MARGIN = { left: 70, right: 20, top: 40, bottom: 50 }
const MIN_MS = 0.1
const MAX_MS = 1_000
const MAX_TAIL = 4 // 99.99 %
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e']

const plotWidth = WIDTH - MARGIN.left - MARGIN.right
const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom

function x (ms) {
  const clamped = Math.min(MAX_MS, Math.max(MIN_MS, ms))
  return MARGIN.left + plotWidth * (Math.log10(clamped) - Math.log10(MIN_MS)) / (Math.log10(MAX_MS) - Math.log10(MIN_MS))
}

function y (percentile) {
  const tail = Math.min(MAX_TAIL, -Math.log10(Math.max(1e-9, 1 - percentile / 100)))
  return MARGIN.top + plotHeight * (1 - tail / MAX_TAIL)
}

function escape (text) {
  return String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

/** A step line through [percentile, ms] pairs, up to 99.99 %. */
function line (cdf, color, width, opacity) {
  const points = []
  let previousY = y(0)
  for (const [percentile, ms] of cdf) {
    if (percentile > 99.995) break
    const px = x(ms).toFixed(1)
    points.push(`${px},${previousY.toFixed(1)}`, `${px},${y(percentile).toFixed(1)}`)
    previousY = y(percentile)
  }
  return `<polyline fill="none" stroke="${color}" stroke-width="${width}" stroke-opacity="${opacity}" points="${points.join(' ')}"/>`
}

/**
 * `series`: [{ label, rounds: [cdf, ...], median: cdf }], where a cdf is
 * [[percentile, ms], ...] in rising order. Returns the SVG document.
 */
function cdfSvg (title, subtitle, series) {
  const parts = []
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`)
  parts.push(`<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`)
  parts.push(`<text x="${MARGIN.left}" y="18" font-size="15" font-weight="bold">${escape(title)}</text>`)
  parts.push(`<text x="${MARGIN.left}" y="33" fill="#555">${escape(subtitle)}</text>`)
  for (const ms of [0.1, 1, 10, 100, 1000]) {
    parts.push(`<line x1="${x(ms)}" y1="${MARGIN.top}" x2="${x(ms)}" y2="${MARGIN.top + plotHeight}" stroke="#ddd"/>`)
    parts.push(`<text x="${x(ms)}" y="${MARGIN.top + plotHeight + 16}" text-anchor="middle">${ms}</text>`)
  }
  for (const percentile of [0, 50, 90, 99, 99.9, 99.99]) {
    parts.push(`<line x1="${MARGIN.left}" y1="${y(percentile)}" x2="${MARGIN.left + plotWidth}" y2="${y(percentile)}" stroke="#ddd"/>`)
    parts.push(`<text x="${MARGIN.left - 6}" y="${y(percentile) + 4}" text-anchor="end">${percentile} %</text>`)
  }
  parts.push(`<rect x="${MARGIN.left}" y="${MARGIN.top}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#999"/>`)
  parts.push(`<text x="${MARGIN.left + plotWidth / 2}" y="${HEIGHT - 10}" text-anchor="middle">latency of a call, ms (log scale)</text>`)
  parts.push(`<text transform="translate(16 ${MARGIN.top + plotHeight / 2}) rotate(-90)" text-anchor="middle">percentile of calls</text>`)
  series.forEach((one, index) => {
    const color = COLORS[index % COLORS.length]
    for (const cdf of one.rounds) parts.push(line(cdf, color, 1, 0.3))
    if (one.median !== undefined) parts.push(line(one.median, color, 2.5, 1))
    const legendY = MARGIN.top + 18 + index * 18
    parts.push(`<line x1="${MARGIN.left + 12}" y1="${legendY - 4}" x2="${MARGIN.left + 36}" y2="${legendY - 4}" stroke="${color}" stroke-width="2.5"/>`)
    parts.push(`<text x="${MARGIN.left + 42}" y="${legendY}">${escape(one.label)}</text>`)
  })
  parts.push('</svg>')
  return parts.join('\n') + '\n'
}

module.exports = { cdfSvg }
