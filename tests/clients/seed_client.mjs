const response = await fetch('http://localhost:45678/v1/generate_response', {
method: 'POST',
headers: {
'Content-Type': 'application/json',
'Authorization': `Bearer ${process.env.TIGER_API_KEY}`
},
body: JSON.stringify({
model: 'Llama-3.1-8b',
messages: [{ role: 'user', content: 'Hello!' }],
stream: true
})
});
const reader = response.body.getReader();
const decoder = new TextDecoder();
let buffer = '';
while (true) {
const { value, done } = await reader.read();
if (done) break;
buffer += decoder.decode(value, { stream: true });
const lines = buffer.split('\n');
buffer = lines.pop() || ''; // Keep incomplete line in buffer
for (const line of lines) {
if (line.trim()) {
const chunk = JSON.parse(line);
if (chunk.type === 'info') {
console.log('Info:', chunk.message);
} else if (chunk.type === 'delta') {
process.stdout.write(chunk.delta); // Print incrementally
} else if (chunk.type === 'stop') {
console.log('\nGeneration complete:', chunk.usage);
} else if (chunk.type === 'error') {
console.error('Error:', chunk.message);
break; // Stop processing on error
}
}
}
}
