/** Everything an async iterable yields, and the error that ended it (`null` for a clean end). */
export async function drain<T> (items: AsyncIterable<T>): Promise<{ items: T[], error: unknown }> {
  const got: T[] = []
  try {
    for await (const item of items) got.push(item)
    return { items: got, error: null }
  } catch (error) {
    return { items: got, error }
  }
}
