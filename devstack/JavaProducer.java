// Kafka's own Java producer (kafka-clients, from the broker's distribution), driven from stdin,
// so tests write records the way most services in production do: with compression, keys,
// headers and transactions. Run by devstack/java_producer.py as a single source file:
//
//   java -cp '<kafka libs>/*' JavaProducer.java <bootstrap> <topic> <compression> [<transactional.id>]
//
// One command per line on stdin, fields separated by tabs, bytes in base64 ("-" for null):
//   send <partition> <key> <headers> <value>    headers: name=base64,name=base64 (or -)
//   flush | begin | commit | abort | quit
// Every command but send answers one line on stdout: "ok", or "error <what>". A first line
// "ready" says the producer is up (and its transactions initialised). Records are held until
// flush (linger.ms is long), so the records sent between two flushes form one batch per partition.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class JavaProducer {
    public static void main(String[] args) throws Exception {
        String topic = args[1];
        Properties config = new Properties();
        config.put("bootstrap.servers", args[0]);
        config.put("compression.type", args[2]);
        config.put("key.serializer", ByteArraySerializer.class.getName());
        config.put("value.serializer", ByteArraySerializer.class.getName());
        config.put("acks", "all");
        config.put("linger.ms", "600000");
        config.put("batch.size", String.valueOf(16 << 20));
        config.put("max.request.size", String.valueOf(16 << 20));
        config.put("buffer.memory", String.valueOf(64 << 20));
        boolean transactional = args.length > 3;
        if (transactional) {
            config.put("transactional.id", args[3]);
        }
        Base64.Decoder base64 = Base64.getDecoder();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(config)) {
            if (transactional) {
                producer.initTransactions();
            }
            answer("ready");
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = in.readLine()) != null) {
                String[] part = line.split("\t", -1);
                try {
                    switch (part[0]) {
                        case "send" -> {
                            List<Header> headers = new ArrayList<>();
                            if (!part[3].equals("-")) {
                                for (String header : part[3].split(",")) {
                                    String[] kv = header.split("=", 2);
                                    headers.add(new RecordHeader(kv[0], kv[1].equals("-") ? null : base64.decode(kv[1])));
                                }
                            }
                            byte[] key = part[2].equals("-") ? null : base64.decode(part[2]);
                            byte[] value = part[4].equals("-") ? null : base64.decode(part[4]);
                            producer.send(new ProducerRecord<>(topic, Integer.parseInt(part[1]), key, value, headers));
                        }
                        case "flush" -> { producer.flush(); answer("ok"); }
                        case "begin" -> { producer.beginTransaction(); answer("ok"); }
                        case "commit" -> { producer.commitTransaction(); answer("ok"); }
                        case "abort" -> { producer.abortTransaction(); answer("ok"); }
                        case "quit" -> { answer("ok"); return; }
                        default -> answer("error unknown command " + part[0]);
                    }
                } catch (Exception e) {
                    answer("error " + e.toString().replace('\n', ' '));
                }
            }
        }
    }

    private static void answer(String line) {
        System.out.println(line);
        System.out.flush();
    }
}
