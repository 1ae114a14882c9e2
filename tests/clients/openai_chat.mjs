// One streaming chat through the official `openai` npm package, as an app would
// write it; prints what it saw as one JSON line. OPENAI_BASE_URL and OPENAI_API_KEY
// come from the environment (the SDK reads them), MODEL names the model.
import OpenAI from "openai";

const client = new OpenAI({ maxRetries: 0 });
const stream = await client.chat.completions.create({
  model: process.env.MODEL,
  messages: [{ role: "user", content: "Name three colours." }],
  max_tokens: 12,
  temperature: 0,
  stream: true,
});
let text = "";
const roles = [];
const finishReasons = [];
for await (const chunk of stream) {
  const choice = chunk.choices[0];
  if (choice.delta.role) roles.push(choice.delta.role);
  text += choice.delta.content ?? "";
  if (choice.finish_reason) finishReasons.push(choice.finish_reason);
}
console.log(JSON.stringify({ text, roles, finish_reasons: finishReasons }));
